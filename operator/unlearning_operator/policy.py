"""What to do after an attempt failed: restart the whole group, or fail the job. Pure: the resource's status
and what was observed of the attempt in, a decision out; `handlers` carries it out.

The rules:
- a permanent failure (invalid job, missing data, denied storage: retrying cannot help) fails the job at once;
- an interruption (a worker got SIGTERM and checkpointed: preemption, eviction, node drain) that got further
  than the last restart restarts the group for free, counted in `status.preemptions`;
- any other failure restarts the group while failures (restarts minus free ones) stay below
  `runPolicy.backoffLimit`, and fails the job with `BackoffLimitExceeded` after that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from unlearning_operator.observe import INTERRUPTED, Observation


@dataclass(frozen=True)
class Restart:
    attempt: int
    """The new attempt's number (the Job is `<name>-r<attempt>`)."""
    preemptions: int
    """status.preemptions after this restart (one more if this one is free)."""
    message: str


@dataclass(frozen=True)
class Fail:
    observation: Observation
    """The failure to report, reworded for a used-up backoff limit."""


def progressed(seen: Observation, last_restart: dict[str, Any] | None) -> bool:
    """Whether an interrupted attempt got further than the last restart: only then is its restart free, so a
    job that is evicted again and again without training (for example for its own memory use) still fails."""
    step = seen.failure.step if seen.failure else None
    previous = (last_restart or {}).get("step")
    return step is not None and (previous is None or step > previous)


def after_failure(seen: Observation, status: dict[str, Any], backoff_limit: int) -> Restart | Fail:
    """The decision for a failed attempt `seen`, given the resource's status and runPolicy.backoffLimit."""
    restarts = int(status.get("restarts") or 0)
    preemptions = int(status.get("preemptions") or 0)
    if seen.permanent:
        return Fail(seen)
    interrupted = seen.reason == INTERRUPTED and progressed(seen, status.get("lastRestart"))
    failures = restarts - preemptions
    if not interrupted and failures >= backoff_limit:
        message = f"{failures + 1} attempt(s) failed; last: {seen.message}"
        return Fail(replace(seen, reason="BackoffLimitExceeded", message=message))
    attempt = restarts + 1
    if interrupted:
        message = (
            f"attempt {attempt} was interrupted ({seen.message}); restarting all workers from the checkpoint, "
            "not counted against runPolicy.backoffLimit"
        )
    else:
        message = f"attempt {attempt} failed ({seen.reason}: {seen.message}); restarting all workers"
    return Restart(attempt, preemptions + int(interrupted), message)
