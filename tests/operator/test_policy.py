"""The restart policy as a table: status and observed attempt in, decision out."""

from __future__ import annotations

import pytest

from unlearning_operator.observe import INTERRUPTED, Failure, Observation
from unlearning_operator.policy import Fail, Restart, after_failure, progressed


def _failed(reason: str, *, step: int | None = None, permanent: bool = False) -> Observation:
    return Observation("Failed", reason, f"{reason} at {step}", Failure(1, reason, "log tail", step), permanent)


CRASH = _failed("WorkerKilled", step=40)
INTERRUPTION_AT_60 = _failed(INTERRUPTED, step=60)
INTERRUPTION_AT_40 = _failed(INTERRUPTED, step=40)
INTERRUPTION_NO_STEP = _failed(INTERRUPTED)
DATA_MISSING = _failed("DataError", permanent=True)


@pytest.mark.parametrize(
    ("seen", "status", "backoff_limit", "expected"),
    [
        (CRASH, {}, 3, Restart(1, 0, "")),
        (CRASH, {"restarts": 2}, 3, Restart(3, 0, "")),
        (CRASH, {"restarts": 3}, 3, "BackoffLimitExceeded"),
        (CRASH, {}, 0, "BackoffLimitExceeded"),
        (CRASH, {"restarts": 5, "preemptions": 3}, 3, Restart(6, 3, "")),
        (DATA_MISSING, {}, 3, "DataError"),
        (INTERRUPTION_AT_60, {"restarts": 3}, 3, Restart(4, 1, "")),
        (INTERRUPTION_AT_60, {"restarts": 1, "lastRestart": {"step": 40}}, 3, Restart(2, 1, "")),
        (INTERRUPTION_AT_40, {"restarts": 1, "lastRestart": {"step": 40}}, 3, Restart(2, 0, "")),
        (INTERRUPTION_AT_40, {"restarts": 3, "lastRestart": {"step": 40}}, 3, "BackoffLimitExceeded"),
        (INTERRUPTION_NO_STEP, {"restarts": 3}, 3, "BackoffLimitExceeded"),
    ],
    ids=[
        "first-crash-restarts",
        "third-crash-restarts",
        "fourth-crash-fails",
        "no-retries-allowed",
        "free-restarts-do-not-count",
        "permanent-fails-at-once",
        "interruption-with-progress-is-free-even-at-the-limit",
        "interruption-beyond-the-last-restart-is-free",
        "interruption-without-progress-counts",
        "interruption-without-progress-at-the-limit-fails",
        "interruption-without-a-step-counts",
    ],
)
def test_after_failure(seen, status, backoff_limit, expected):
    decision = after_failure(seen, status, backoff_limit)
    if isinstance(expected, Restart):
        assert isinstance(decision, Restart)
        assert (decision.attempt, decision.preemptions) == (expected.attempt, expected.preemptions)
        free = decision.preemptions > int(status.get("preemptions") or 0)
        assert ("not counted against runPolicy.backoffLimit" in decision.message) == free
    else:
        assert isinstance(decision, Fail) and decision.observation.reason == expected
        if expected == "BackoffLimitExceeded":
            assert (
                decision.observation.message.endswith(seen.message)
                and "attempt(s) failed" in decision.observation.message
            )


def test_progress_is_measured_against_the_last_restart():
    assert progressed(INTERRUPTION_AT_40, None)
    assert progressed(INTERRUPTION_AT_60, {"step": 40})
    assert not progressed(INTERRUPTION_AT_40, {"step": 40})
    assert not progressed(INTERRUPTION_NO_STEP, None)
