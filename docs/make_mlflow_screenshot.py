"""Reproduce docs/mlflow-compare.png: demo runs of several methods in a local MLflow server, their metrics over
steps charted side by side in the MLflow UI, captured with headless Chromium (Debian's `chromium` package).

    python docs/make_mlflow_screenshot.py [--methods siss retrack naive]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import MlflowServer
from unlearning_trainer.demo import DemoSettings, demo_job
from unlearning_trainer.runner import run_job

OUT = Path(__file__).parent / "mlflow-compare.png"
EXPERIMENT = "digits-demo"
WINDOW = (1600, 1800)


def log_runs(url: str, methods: list[str], root: Path) -> str:
    """One 100-step demo run per method (128 samples every 20 steps) into the experiment; returns its id."""
    for method in methods:
        job = demo_job(DemoSettings(method=method, steps=100, evaluate_every=20, samples=128), root / method)
        tracking = job.spec.tracking.model_copy(update={"mlflow_tracking_uri": url, "experiment": EXPERIMENT})
        run_job(
            job.model_copy(update={"spec": job.spec.model_copy(update={"tracking": tracking})}), show_progress=False
        )
        print(f"logged {method}", flush=True)
    return MlflowClient(url).get_experiment_by_name(EXPERIMENT).experiment_id


def screenshot(url: str, profile: Path) -> None:
    """The experiment's chart view, as a person opening it would see it."""
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
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--virtual-time-budget=30000",
            "--hide-scrollbars",
            f"--screenshot={OUT}",
            url,
        ],
        check=True,
        env={**os.environ},
        timeout=240,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["siss", "retrack", "naive"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        server = MlflowServer(root=root / "mlflow")
        server.start()
        try:
            experiment = log_runs(server.url, args.methods, root)
            screenshot(f"{server.url}/#/experiments/{experiment}/runs?compareRunsMode=CHART", root / "chrome")
            time.sleep(1)
        finally:
            server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
