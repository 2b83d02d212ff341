"""The operator's side of MLflow: it creates the run before the trainer starts (so retries continue one run),
reads the trainer's progress from it, and ends it. Only mlflow-skinny is needed; never torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("unlearning_operator.mlflow")

PROGRESS_METRIC = "progress/step"
RESUMED_METRIC = "progress/resumedFrom"
UID_TAG = "unlearning.dev/uid"


@dataclass(frozen=True)
class Progress:
    step: int
    resumed_from: int | None
    """The step the current attempt started from, once its trainer logged it."""


class MlflowRuns:
    def __init__(self, tracking_uri: str, ui_url: str = "") -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.ui_url = (ui_url or tracking_uri).rstrip("/")

    def ensure(self, experiment: str, run_name: str, tags: dict[str, str]) -> tuple[dict[str, str], bool]:
        """The job's run, found again by its `unlearning.dev/uid` tag or created: retries, conflicts and
        operator restarts never leave a second run. Returns (run, whether it was created now)."""
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        uid = tags[UID_TAG]
        existing = self.client.search_runs([experiment_id], filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1)
        if existing:
            return self._describe(experiment_id, existing[0].info.run_id), False
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return self._describe(experiment_id, run.info.run_id), True

    def _describe(self, experiment_id: str, run_id: str) -> dict[str, str]:
        return {
            "experimentId": experiment_id,
            "runId": run_id,
            "runUrl": f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}",
        }

    def progress(self, run_id: str) -> Progress | None:
        """The latest step and resume point the trainer logged (the latest value of each metric)."""
        metrics: dict[str, Any] = self.client.get_run(run_id).data.metrics
        step, resumed = metrics.get(PROGRESS_METRIC), metrics.get(RESUMED_METRIC)
        if step is None and resumed is None:
            return None
        resumed_from = None if resumed is None else int(resumed)
        return Progress(step=max(int(step or 0), resumed_from or 0), resumed_from=resumed_from)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def end(self, run_id: str, status: str) -> None:
        run = self.client.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            self.client.set_terminated(run_id, status)
