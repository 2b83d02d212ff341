"""The tracker interface and the default tracker that only writes structured logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("unlearning_trainer.tracking")


class Tracker(Protocol):
    """Where a run's parameters, metrics and artifacts go. Only rank 0 ever holds a real tracker."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def finish(self, status: str) -> None: ...

    def register_model(self, name: str, source: str, alias: str | None) -> str | None:
        """Register `source` in a model registry; returns the new version, or None without a registry."""
        ...

    def health(self) -> dict[str, Any] | None:
        """What went wrong talking to the tracking server, or None for trackers without one."""
        ...


class LogTracker:
    """Logs parameters and evaluation metrics; step metrics go to the debug level."""

    def log_params(self, params: dict[str, Any]) -> None:
        logger.info("params %s", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        is_evaluation = any(key.startswith("eval/") for key in metrics)
        logger.log(logging.INFO if is_evaluation else logging.DEBUG, "step=%d %s", step, _format(metrics))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        logger.debug("artifact %s", path)

    def finish(self, status: str) -> None:
        logger.info("run finished: %s", status)

    def register_model(self, name: str, source: str, alias: str | None) -> str | None:
        return None

    def health(self) -> dict[str, Any] | None:
        return None


class NullTracker(LogTracker):
    """For processes other than rank 0: records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items()))


class FanOutTracker:
    """Sends everything to several trackers; registration and health come from the first that has them."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_params(self, params: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_metrics(metrics, step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        for tracker in self.trackers:
            tracker.log_artifact(path, folder)

    def finish(self, status: str) -> None:
        for tracker in self.trackers:
            tracker.finish(status)

    def register_model(self, name: str, source: str, alias: str | None) -> str | None:
        versions = (tracker.register_model(name, source, alias) for tracker in self.trackers)
        return next((version for version in versions if version is not None), None)

    def health(self) -> dict[str, Any] | None:
        return next((h for h in (tracker.health() for tracker in self.trackers) if h is not None), None)
