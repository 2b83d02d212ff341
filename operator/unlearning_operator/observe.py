"""Read the state of a child Job and its pods into what the UnlearningJob's status should say. Pure.

The trainer writes a JSON termination message (reason, message, step, runId) on exit; with
`FallbackToLogsOnError` the kubelet puts the log tail there instead when the trainer crashed before writing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 1024
ROOT_CAUSE = "Root Cause (first observed failure):"
INTERRUPTED = "Interrupted"
"""The trainer's reason after SIGTERM, once it saved a checkpoint."""
SECONDARY_SYMPTOMS = ("Connection closed by peer", "Connection reset by peer", "SignalException")
"""What the surviving workers report after another worker died; the status should name the one that died."""


@dataclass(frozen=True)
class Failure:
    exit_code: int | None
    reason: str
    message: str
    step: int | None = None
    """The step the trainer reached, when its summary says (an interrupted trainer checkpointed it)."""

    def as_status(self) -> dict[str, Any]:
        status = {"exitCode": self.exit_code, "reason": self.reason, "message": self.message}
        return status if self.step is None else status | {"step": self.step}


@dataclass(frozen=True)
class Observation:
    state: str
    """One of Pending, Running, Stopping, Suspended, Succeeded, Failed."""
    reason: str
    message: str
    failure: Failure | None = None
    permanent: bool = False
    """A failure that a retry cannot fix (invalid job, missing data, denied access)."""
    step: int | None = None
    run_id: str | None = None
    resumed_from: int | None = None
    audit_passed: bool | None = None


def _condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return None


def torchrun_root_cause(text: str) -> dict[str, str] | None:
    """The first failed worker from torchrun's failure summary in a log tail, as a reason and one-line message.

    A worker that dies without a Python exception (SIGKILL by the OOM killer, a segfault) writes no summary of
    its own; torchrun's `Root Cause (first observed failure)` block is then the only record of who died and how.
    """
    _, found, block = text.partition(ROOT_CAUSE)
    if not found:
        return None
    fields: dict[str, str] = {}
    for line in block.strip().splitlines():
        if line.startswith("==="):
            break
        key, separator, value = line.partition(":")
        if separator and key.strip() in ("rank", "exitcode", "traceback"):
            fields.setdefault(key.strip(), value.strip())
    killed = "SIGKILL" in block
    message = f"worker rank {fields.get('rank', '?')} exited with code {fields.get('exitcode', '?')}"
    if fields.get("traceback"):
        message += f": {fields['traceback']}"
    if killed:
        message += " (out of memory, or killed from outside the container)"
    return {"reason": "WorkerKilled" if killed else "WorkerFailed", "message": message[:MAX_MESSAGE]}


def parse_termination_message(text: str | None) -> dict[str, Any]:
    """The trainer's JSON summary, or what a log tail says (torchrun's root cause, else the raw tail)."""
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return torchrun_root_cause(text) or {"message": text.strip()[-MAX_MESSAGE:]}
    return parsed if isinstance(parsed, dict) else {"message": str(parsed)[-MAX_MESSAGE:]}


def _rank(terminated: dict[str, Any], summary: dict[str, Any]) -> int:
    """Root-cause order: a worker's own error, then an interruption, then a peer's lost connection.

    Only the trainer's own summary says it was interrupted (told to stop by SIGTERM, checkpoint saved): the
    container's exit code is torchrun's, which exits with 1 on SIGTERM although its workers exited with 143.
    """
    message = terminated.get("message") or ""
    if any(symptom in message for symptom in SECONDARY_SYMPTOMS):
        return 2
    return 1 if summary.get("reason") == INTERRUPTED else 0


def pod_failure(pods: list[dict[str, Any]], permanent_codes: list[int]) -> tuple[Failure | None, bool]:
    """The root-cause failed container's exit code, reason and message, and whether the failure is permanent."""
    failed = [
        (pod, t, parse_termination_message(t.get("message")))
        for pod in pods
        if (t := _terminated(pod)) and t.get("exitCode", 0) != 0
    ]
    failed.sort(key=lambda item: (_rank(item[1], item[2]), item[0].get("metadata", {}).get("name", "")))
    if not failed:
        return None, False
    _, terminated, summary = failed[0]
    code = terminated.get("exitCode")
    reason = summary.get("reason") or terminated.get("reason") or "TrainerError"
    if terminated.get("reason") == "OOMKilled":
        reason = "OOMKilled"
    message = str(summary.get("message") or terminated.get("reason") or f"exit code {code}")[:MAX_MESSAGE]
    if "NCCL" in message and "timeout" in message.lower():
        reason = "NCCLTimeout"
    step = summary.get("step")
    return Failure(code, reason, message, step if isinstance(step, int) else None), code in permanent_codes


def _summary(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The termination message of the first succeeded pod by name: index 0 holds rank 0, which has the most."""
    for pod in sorted(pods, key=lambda pod: pod.get("metadata", {}).get("name", "")):
        terminated = _terminated(pod)
        if terminated and terminated.get("exitCode") == 0:
            return parse_termination_message(terminated.get("message"))
    return {}


def _running(pods: list[dict[str, Any]]) -> bool:
    return any(_terminated(pod) is None and (pod.get("status") or {}).get("phase") == "Running" for pod in pods)


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], permanent_codes: list[int]) -> Observation:
    """What the child Job and its pods say about the attempt.

    A failed attempt is judged by the Job controller's `Failed` condition, or by `FailureTarget` once no pod
    runs any more (Kubernetes ≥ 1.31 sets Failed only after the remaining pods are gone): every worker's exit
    is then known, so the root cause is not just the first report to arrive. A failed pod that the Job
    controller ignores (podFailurePolicy Ignore for disruptions) fails nothing.
    """
    if job is None:
        return Observation("Pending", "JobMissing", "the trainer Job does not exist yet")
    status = job.get("status") or {}
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        summary = _summary(pods)
        return Observation(
            "Succeeded",
            "JobSucceeded",
            "the trainer finished",
            step=summary.get("step"),
            run_id=summary.get("runId"),
            resumed_from=summary.get("resumedFrom"),
            audit_passed=summary.get("auditPassed"),
        )
    failed = _condition(job, "Failed")
    target = _condition(job, "FailureTarget")
    if target and not failed and _running(pods):
        return Observation("Stopping", "WorkersStopping", "a worker failed; waiting for the others to stop")
    failed = failed or target
    if failed:
        failure, permanent = pod_failure(pods, permanent_codes)
        reason = failed.get("reason", "JobFailed")
        if failure is None:
            failure = Failure(None, reason, failed.get("message", ""))
        if reason == "DeadlineExceeded":
            return Observation("Failed", "DeadlineExceeded", failed.get("message", ""), failure, permanent=True)
        return Observation("Failed", failure.reason, failure.message, failure, permanent=permanent)
    if (job.get("spec") or {}).get("suspend"):
        return Observation("Suspended", "JobSuspended", "the trainer Job is suspended")
    if status.get("ready"):
        running = f"{status['ready']} of {status.get('active', 0)} trainer pod(s) running"
        return Observation("Running", "PodsRunning", running)
    return Observation("Pending", "PodsPending", _pending_message(pods) or "waiting for trainer pods to start")


def _pending_message(pods: list[dict[str, Any]]) -> str | None:
    """Why a pod has not started, as the scheduler or the kubelet says: unschedulable, image, config."""
    for pod in sorted(pods, key=lambda pod: pod.get("metadata", {}).get("name", "")):
        name = pod.get("metadata", {}).get("name", "")
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f"pod {name} cannot be scheduled: {condition.get('message') or condition.get('reason')}"
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip()[:MAX_MESSAGE]
    return None
