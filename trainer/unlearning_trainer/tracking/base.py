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


class NullTracker:
    """For processes other than rank 0."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items()))
