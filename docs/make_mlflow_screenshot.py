"""Reproduce docs/mlflow-compare.png: demo runs of several methods in a local MLflow server, and the MLflow UI's
metric page for the memorization rate, the forget image's NLL and the sample quality (Fréchet distance) over
steps with every run on one chart, each captured in headless Chromium (Debian's `chromium` package) and stacked
into one picture.

Chromium is driven over the DevTools protocol (websocket-client, which the Kubernetes client already brings):
MLflow's assistant panel, which opens by itself on a first visit, is closed with its own button before each
picture so that the chart gets the room.

    python docs/make_mlflow_screenshot.py [--methods siss retrack naive] [--root DIR]

With --root the MLflow data stays in DIR and a second call reuses the runs (only the pictures are taken again).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import websocket
from mlflow import MlflowClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import MlflowServer, free_port
from unlearning_trainer.demo import DemoSettings, demo_job
from unlearning_trainer.runner import run_job

OUT = Path(__file__).parent / "mlflow-compare.png"
EXPERIMENT = "digits-demo"
WINDOW = (1400, 640)
METRICS = ("eval/memorization_rate", "eval/forget_nll_bpd", "eval/quality_fd")
CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click();"
RENDER_SECONDS = 8.0


def log_runs(url: str, methods: list[str], root: Path) -> str:
    """One 100-step demo run per method (128 samples every 20 steps) into the experiment; returns its id."""
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None and client.search_runs([experiment.experiment_id]):
        return experiment.experiment_id
    for method in methods:
        job = demo_job(DemoSettings(method=method, steps=100, evaluate_every=20, samples=128), root / method)
        tracking = job.spec.tracking.model_copy(update={"mlflow_tracking_uri": url, "experiment": EXPERIMENT})
        run_job(
            job.model_copy(update={"spec": job.spec.model_copy(update={"tracking": tracking})}), show_progress=False
        )
        print(f"logged {method}", flush=True)
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


def metric_page(url: str, experiment: str, runs: list[str], metric: str) -> str:
    """The UI's page that plots one metric over steps for several runs (the query its own links carry)."""
    query = {
        "runs": json.dumps(runs),
        "metric": json.dumps(metric),
        "experiments": json.dumps([experiment]),
        "plot_metric_keys": json.dumps([metric]),
        "plot_layout": "{}",
        "x_axis": "step",
        "y_axis_scale": "linear",
        "line_smoothness": "1",
        "show_point": "true",
        "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    return f"{url}/#/metric/?" + "&".join(f"{key}={quote(value)}" for key, value in query.items())


class Browser:
    """Headless Chromium and one page of it, over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.socket = websocket.create_connection(self._page_socket(), timeout=60)
        self.next_id = 0

    def _page_socket(self) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(RENDER_SECONDS)

    def screenshot(self) -> Image.Image:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def capture(url: str, experiment: str, profile: Path) -> list[Image.Image]:
    """The metric page of each of METRICS, with the assistant panel closed."""
    runs = [run.info.run_id for run in MlflowClient(url).search_runs([experiment])]
    browser = Browser(profile)
    try:
        shots = []
        for metric in METRICS:
            browser.open(metric_page(url, experiment, runs, metric))
            browser.call("Runtime.evaluate", expression=CLOSE_ASSISTANT)
            time.sleep(2)
            shots.append(browser.screenshot())
        return shots
    finally:
        browser.close()


def stack(images: list[Image.Image]) -> Image.Image:
    """The screenshots one below the other."""
    picture = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    top = 0
    for image in images:
        picture.paste(image, (0, top))
        top += image.height
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["siss", "retrack", "naive"])
    parser.add_argument("--root", type=Path, help="keep the MLflow data here and reuse its runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = args.root or Path(folder)
        server = MlflowServer(root=root / "mlflow")
        server.start()
        try:
            experiment = log_runs(server.url, args.methods, root)
            stack(capture(server.url, experiment, Path(folder) / "chromium")).save(OUT)
        finally:
            server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
