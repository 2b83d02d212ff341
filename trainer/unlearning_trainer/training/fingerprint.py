"""What shapes the trained weights, recorded in every checkpoint so that a rerun never resumes another run's.

A job resumes from its newest checkpoint. If the job file changed in between (another method, learning rate,
data or base model), resuming would finish a run that no spec describes and publish an audit record naming a
method that did not train the weights; the trainer refuses instead and says what changed. Checkpoint
bookkeeping (`checkpointEvery`, `checkpointsToKeep`), gradient checkpointing, the stopping rule, evaluation
settings and the number of workers do not change the weights (global batches are the same for any world size),
so they may change between attempts; so may `training.steps` under a constant learning rate, whose first N
steps do not depend on the total (training longer continues the same run), but not under a schedule that does.
"""

from __future__ import annotations

import hashlib
from typing import Any

from unlearning_trainer.errors import SpecError
from unlearning_trainer.spec import UnlearningJobSpec

BOOKKEEPING = {"checkpoint_every", "checkpoints_to_keep", "gradient_checkpointing", "stop_when"}
"""Settings that change how training runs, never the weights it produces."""
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


class ResumeMismatch(SpecError):
    """The output's checkpoints were written by a job that trains differently."""

    reason = "CheckpointMismatch"


def fingerprint(spec: UnlearningJobSpec, *, model_digest: str, data_digest: str) -> dict[str, Any]:
    """The method and training settings as written, and digests of the base model and of the data."""
    length_free = spec.training.lr_scheduler in LENGTH_FREE_SCHEDULES
    excluded = BOOKKEEPING | ({"steps"} if length_free else set())
    return {
        "method": spec.method.model_dump(mode="json", by_alias=True),
        "training": spec.training.model_dump(mode="json", by_alias=True, exclude=excluded),
        "data": data_digest,
        "model": model_digest,
    }


def data_digest(forget_digests: list[str], retained_digest: str) -> str:
    """sha256 over the forget files' digests (sorted) and the digest of the retained images in order."""
    digest = hashlib.sha256()
    for value in [*sorted(forget_digests), retained_digest]:
        digest.update(value.encode() + b"\n")
    return digest.hexdigest()


def differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's fingerprint and the job's, one line per setting."""
    if saved is None:
        return ["the checkpoint records no fingerprint (an older version wrote it)"]
    lines = []
    for section in ("method", "training"):
        old, new = saved.get(section) or {}, current[section]
        lines += [
            f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
    if saved.get("data") != current["data"]:
        lines.append("data: the forget or retained images differ")
    if saved.get("model") != current["model"]:
        lines.append("model: the base model's files differ")
    return lines


def check_resume(saved: dict[str, Any] | None, current: dict[str, Any], *, step: int) -> None:
    """Raise ResumeMismatch unless the checkpoint at `step` was written by a job that trains like this one."""
    changed = differences(saved, current)
    if changed:
        raise ResumeMismatch(
            f"spec.output.uri holds a checkpoint at step {step} of a job that trains differently: "
            + "; ".join(changed)
            + ". Fix: rerun with `unlearn run --restart` to discard its checkpoints and start from the base model, "
            "or choose a new spec.output.uri (on Kubernetes: a new output URI)."
        )
