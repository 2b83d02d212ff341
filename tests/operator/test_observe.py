"""Reading a trainer pod's termination message into the UnlearningJob's failure (pure functions)."""

from __future__ import annotations

import json

from unlearning_operator.observe import parse_termination_message, pod_failure

TORCHRUN_TAIL = """    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
unlearning_trainer.cli FAILED
------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_06:50:07
  host      : localhost
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 29126)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 29126
======================================================
"""


def _pod(name: str, exit_code: int, message: str, reason: str = "Error") -> dict:
    terminated = {"exitCode": exit_code, "reason": reason, "message": message}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}


def test_a_killed_worker_is_named_from_torchruns_root_cause():
    summary = parse_termination_message(TORCHRUN_TAIL)
    assert summary["reason"] == "WorkerKilled"
    assert summary["message"].startswith("worker rank 1 (local_rank: 0) exited with code -9 (pid: 29126): Signal 9")
    assert "out of memory" in summary["message"]


def test_a_worker_that_failed_without_sigkill_is_a_worker_failure():
    tail = TORCHRUN_TAIL.replace("-9 (pid: 29126)", "1 (pid: 7)").replace(
        "Signal 9 (SIGKILL) received by PID 29126", "RuntimeError: boom"
    )
    assert parse_termination_message(tail) == {
        "reason": "WorkerFailed",
        "message": "worker rank 1 (local_rank: 0) exited with code 1 (pid: 7): RuntimeError: boom",
    }


def test_the_trainers_own_summary_wins_and_other_tails_are_kept_raw():
    summary = {"reason": "DataError", "message": "spec.data.forget.uri: no such object", "step": 3}
    assert parse_termination_message(json.dumps(summary)) == summary
    assert parse_termination_message("Segmentation fault\n") == {"message": "Segmentation fault"}
    assert parse_termination_message("") == {}


def test_the_first_failed_pod_by_name_is_reported_and_oom_overrides():
    pods = [_pod("job-r0-1-b", 137, TORCHRUN_TAIL), _pod("job-r0-0-a", 0, "")]
    failure, permanent = pod_failure(pods, [2, 3, 4])
    assert failure is not None and failure.reason == "WorkerKilled" and failure.exit_code == 137 and not permanent
    failure, _ = pod_failure([_pod("job-r0-0-a", 137, "", reason="OOMKilled")], [2, 3, 4])
    assert failure is not None and failure.reason == "OOMKilled"
    failure, permanent = pod_failure([_pod("job-r0-0-a", 3, '{"reason": "DataError", "message": "m"}')], [2, 3, 4])
    assert failure is not None and failure.reason == "DataError" and permanent


def test_a_worker_that_only_lost_its_peer_is_not_the_root_cause():
    lost_peer = json.dumps(
        {"reason": "TrainerError", "message": "RuntimeError: [pair.cc:553] Connection closed by peer [127.0.0.1]:1"}
    )
    pods = [_pod("job-r0-0-a", 1, lost_peer), _pod("job-r0-1-b", 1, TORCHRUN_TAIL)]
    failure, _ = pod_failure(pods, [2, 3, 4])
    assert failure is not None and failure.reason == "WorkerKilled" and "rank 1" in failure.message
    failure, _ = pod_failure(pods[:1], [2, 3, 4])
    assert failure is not None and failure.reason == "TrainerError"


def test_an_interruption_is_the_root_cause_only_when_no_worker_failed_on_its_own():
    interrupted = _pod("job-r0-0-a", 143, json.dumps({"reason": "Interrupted", "message": "interrupted after 9 steps"}))
    lost_peer = _pod("job-r0-1-b", 1, '{"reason": "TrainerError", "message": "Connection closed by peer"}')
    crashed = _pod("job-r0-2-c", 1, '{"reason": "TrainerError", "message": "CUDA error: an illegal memory access"}')
    failure, _ = pod_failure([lost_peer, interrupted], [2, 3, 4])
    assert failure is not None and failure.reason == "Interrupted"
    failure, _ = pod_failure([interrupted, lost_peer, crashed], [2, 3, 4])
    assert failure is not None and failure.reason == "TrainerError" and "illegal memory access" in failure.message
    killed = _pod("job-r0-0-a", 143, "")
    failure, _ = pod_failure([killed], [2, 3, 4])
    assert failure is not None and failure.reason != "Interrupted", "143 without the trainer's summary is no checkpoint"
    under_torchrun = _pod("job-r0-0-a", 1, json.dumps({"reason": "Interrupted", "message": "interrupted after 9"}))
    failure, _ = pod_failure([lost_peer, under_torchrun], [2, 3, 4])
    assert failure is not None and failure.reason == "Interrupted", "torchrun exits 1 on SIGTERM"
