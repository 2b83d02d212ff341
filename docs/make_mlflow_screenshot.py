"""Reproduce docs/mlflow-compare.png: two demo runs (SISS and naive deletion) in a local MLflow server,
compared in the MLflow UI, captured with headless Chromium (Debian's `chromium` package).

    python docs/make_mlflow_screenshot.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import MlflowServer
from unlearning_trainer.demo import DemoSettings, demo_job
from unlearning_trainer.runner import run_job

OUT = Path(__file__).parent / "mlflow-compare.png"
CROP_HEIGHT = 2060
"""Down to the end of the metrics table; the artifact viewer below it is empty."""


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        server = MlflowServer(root=root / "mlflow")
        server.start()
        try:
            run_ids = []
            for method in ("siss", "naive"):
                job = demo_job(DemoSettings(method=method, steps=100, evaluate_every=25, samples=256), root / method)
                spec = job.spec.model_copy(
                    update={
                        "tracking": job.spec.tracking.model_copy(
                            update={"mlflow_tracking_uri": server.url, "experiment": "digits-demo"}
                        )
                    }
                )
                metrics = run_job(job.model_copy(update={"spec": spec}), show_progress=False).metrics
                run_ids.append(metrics["tracking"]["runId"])
            client = MlflowClient(server.url)
            experiment = client.get_experiment_by_name("digits-demo").experiment_id
            runs = json.dumps(run_ids)
            url = f"{server.url}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment])}"
            subprocess.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={root / 'chrome'}",
                    "--window-size=1500,4600",
                    "--virtual-time-budget=20000",
                    "--hide-scrollbars",
                    f"--screenshot={OUT}",
                    url,
                ],
                check=True,
                env={**os.environ},
                timeout=180,
            )
            time.sleep(1)
            with Image.open(OUT) as picture:
                picture.crop((0, 0, 1500, CROP_HEIGHT)).save(OUT)
        finally:
            server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
