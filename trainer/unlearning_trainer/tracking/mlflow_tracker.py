"""MLflow tracking: one run per job, batched metrics, and an outage that never fails training.

- The run is `MLFLOW_RUN_ID` when set (the operator creates it, so retries continue one run, and the operator
  ends it); otherwise a new run in the spec's experiment, which this tracker ends.
- Step metrics are buffered and sent with `log_batch` (one call per metric is about 100× slower).
- Any MLflow error is caught: the data stays buffered (up to a bound), a warning is logged once per outage,
  the next flush retries, and `health()` reports what happened so the result can record it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

logger = logging.getLogger("unlearning_trainer.tracking")

MAX_BUFFERED = 50_000
FLUSH_SECONDS = 10.0
BATCH = 1000
MAX_PARAM_LENGTH = 6000


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        run_name: str,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        system_metrics: bool = True,
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.buffer: list[Metric] = []
        self.pending_artifacts: list[tuple[Path, str | None]] = []
        self.errors = 0
        self.dropped = 0
        self.outage = False
        self.last_flush = time.monotonic()
        self.run_id: str | None = run_id or os.environ.get("MLFLOW_RUN_ID")
        self.owns_run = self.run_id is None
        self._start_arguments = (experiment, run_name, tags or {})
        self._monitor: Any = None
        self._call(lambda: self._start(*self._start_arguments), "start the run")
        if system_metrics and self.run_id:
            self._call(self._start_system_metrics, "start system metrics")

    def _start(self, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        if self.run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        logger.info("MLflow run %s at %s", self.run_id, self.tracking_uri)

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.tracking_uri)
        self._monitor.start()

    def _call(self, action: Any, what: str) -> bool:
        """Run an MLflow call; on failure count it, warn once per outage, and report False."""
        try:
            action()
        except Exception as exc:
            self.errors += 1
            if not self.outage:
                logger.warning("MLflow unavailable (could not %s): %s; training continues, will retry", what, exc)
            self.outage = True
            return False
        if self.outage:
            logger.info("MLflow reachable again")
        self.outage = False
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        self._call(lambda: self.client.log_batch(self._require_run(), params=items), "log params")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None)
        if len(self.buffer) > MAX_BUFFERED:
            self.dropped += len(self.buffer) - MAX_BUFFERED
            del self.buffer[: len(self.buffer) - MAX_BUFFERED]
        is_evaluation = any(key.startswith("eval/") for key in metrics)
        if is_evaluation or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> bool:
        """Send the buffered metrics; keeps them for the next try if MLflow is down."""
        self.last_flush = time.monotonic()
        while self.buffer:
            chunk = self.buffer[:BATCH]
            if not self._call(
                lambda chunk=chunk: self.client.log_batch(self._require_run(), metrics=chunk), "log metrics"
            ):
                return False
            del self.buffer[:BATCH]
        return True

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if not self._call(lambda: self.client.log_artifact(self._require_run(), str(path), folder), "log an artifact"):
            self.pending_artifacts.append((path, folder))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call(
            lambda: self.client.log_batch(self._require_run(), tags=[RunTag(k, v) for k, v in tags.items()]),
            "set tags",
        )

    def register_model(self, name: str, source: str, alias: str | None) -> str | None:
        """Register `source` as a new version of model `name` (created if needed); returns the version."""
        version: list[str] = []

        def register() -> None:
            try:
                self.client.get_registered_model(name)
            except Exception:
                self.client.create_registered_model(name)
            created = self.client.create_model_version(name, source, run_id=self._require_run())
            version.append(created.version)
            if alias:
                self.client.set_registered_model_alias(name, alias, created.version)

        self._call(register, "register the model")
        return version[0] if version else None

    def health(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "available": not self.outage and self.run_id is not None,
            "errors": self.errors,
            "unsentMetrics": len(self.buffer),
            "droppedMetrics": self.dropped,
            "unsentArtifacts": len(self.pending_artifacts),
        }

    def finish(self, status: str) -> None:
        self.flush()
        for path, folder in list(self.pending_artifacts):
            if self._call(
                lambda p=path, f=folder: self.client.log_artifact(self._require_run(), str(p), f), "log an artifact"
            ):
                self.pending_artifacts.remove((path, folder))
        if self._monitor is not None:
            self._call(self._monitor.finish, "stop system metrics")
        if self.owns_run:
            self._call(lambda: self.client.set_terminated(self._require_run(), status), "end the run")
        health = self.health()
        if health["errors"]:
            logger.warning("MLflow had %d failed calls; %d metrics unsent", health["errors"], health["unsentMetrics"])

    def _require_run(self) -> str:
        """The run id; creates the run first if the server was unreachable when training started."""
        if self.run_id is None:
            self._start(*self._start_arguments)
        assert self.run_id is not None
        return self.run_id
