"""The short JSON summary a trainer pod leaves for the operator in its termination message.

Kubernetes keeps at most 4 KiB per container; the operator copies reason, message, step and runId into the
UnlearningJob's status. Written only where `UNLEARNING_TERMINATION_LOG` names a file (the operator sets it).
"""

from __future__ import annotations

import json
import os
from typing import Any

LIMIT = 4000


def write(summary: dict[str, Any]) -> None:
    path = os.environ.get("UNLEARNING_TERMINATION_LOG")
    if not path:
        return
    summary = {key: value for key, value in summary.items() if value is not None}
    text = json.dumps(summary)
    if len(text) > LIMIT:
        summary["message"] = str(summary.get("message", ""))[
            : LIMIT - len(text) + len(str(summary.get("message", ""))) - 20
        ]
        text = json.dumps(summary)
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError:
        pass


def write_summary(summary: dict[str, Any]) -> None:
    """The outcome of a run, from the first process of each pod only: the processes of a pod share the file,
    and on pod 0 the first process is global rank 0, the only one with the MLflow run id and the verdict.
    Errors are written by any process (`write`), since the one that failed knows why."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        write(summary)
