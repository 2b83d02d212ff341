"""kopf handlers for UnlearningJob resources and the trainer Jobs they own.

Handlers are thin: parse, decide (pure functions in `manifests`, `observe`, `conditions`), act (`k8s`,
`mlflow_runs`), write status. Every handler is idempotent; all state lives in the resource's status, so an
operator restart picks up where it left off without duplicating children.

`build_registry(...)` returns a fresh registry, so tests can run several operators without leaking handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from unlearning_operator import conditions, manifests, policy
from unlearning_operator.crd import GROUP, PLURAL, VERSION
from unlearning_operator.k8s import Kubernetes, OwnershipError, StaleError
from unlearning_operator.mlflow_runs import MlflowRuns
from unlearning_operator.observe import Failure, Observation, observe
from unlearning_operator.settings import Settings
from unlearning_trainer.advice import spec_warnings
from unlearning_trainer.errors import SpecError
from unlearning_trainer.spec import UnlearningJobSpec, parse_spec

logger = logging.getLogger("unlearning_operator")
TERMINAL = ("Succeeded", "Failed")
KUEUE_SUSPEND_PENDING = "Workload deactivated; waiting for Kueue to suspend the trainer Job"
FINALIZER = "unlearning.dev/finalizer"
"""No handler needs a finalizer any more; naming the one older versions added lets kopf remove it."""


class Operator:
    """The decisions and actions behind the handlers, bound to one API client and one set of settings."""

    def __init__(self, settings: Settings, kube: Kubernetes, mlflow: MlflowRuns | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self._mlflow = mlflow
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

    def mlflow_for(self, spec: UnlearningJobSpec) -> MlflowRuns | None:
        uri = manifests.resolved_spec(spec, self.settings).tracking.mlflow_tracking_uri
        if not uri:
            return None
        if self._mlflow is None or self._mlflow.tracking_uri != uri:
            self._mlflow = MlflowRuns(uri, self.settings.mlflow_ui_url)
        return self._mlflow

    # ----- status helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _status_update(
        body: dict[str, Any],
        updates: dict[str, tuple[bool | None, str, str]],
        **fields: Any,
    ) -> dict[str, Any]:
        """A status patch with the given conditions set, the phase re-derived and extra fields."""
        status = body.get("status") or {}
        generation = body.get("metadata", {}).get("generation", 1)
        current = list(status.get("conditions") or [])
        for type_, (value, reason, message) in updates.items():
            current = conditions.set_condition(
                current, type_, value, reason=reason, message=message, generation=generation
            )
        phase = conditions.phase(current)
        patch = {"conditions": current, "phase": phase, "observedGeneration": generation, **fields}
        reasons = [c for c in current if c["type"] == phase]
        if reasons:
            patch["reason"], patch["message"] = reasons[0]["reason"], reasons[0]["message"]
        return patch

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the UnlearningJob; failing to post one never fails the handler."""
        try:
            self.kube.create_event(body, type_, reason, message[:1024])
        except Exception as exc:
            logger.warning("could not post event %s on %s: %s", reason, body["metadata"]["name"], exc)

    # ----- create / resume ------------------------------------------------------------------------------------

    def start(self, body: dict[str, Any], patch: kopf.Patch) -> None:
        """Validate, create the MLflow run and the children, and record them in status."""
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL:
            return
        owner = manifests.Owner.from_body(body)
        try:
            spec = parse_spec(body.get("spec"), source=f"UnlearningJob {owner.namespace}/{owner.name}")
        except SpecError as exc:
            message = str(exc)
            patch.status.update(
                self._status_update(
                    body,
                    {"Failed": (True, "InvalidSpec", message), "Created": (False, "InvalidSpec", "nothing created")},
                    failure={"reason": "InvalidSpec", "message": message[:1024]},
                )
            )
            self._event(body, "Warning", "InvalidSpec", message)
            return
        if not status:  # the first start only, not a retry or a resume
            for warning in spec_warnings(spec):
                self._event(body, "Warning", "SpecWarning", warning)
        mlflow_status = status.get("mlflow") or self._create_run(body, owner, spec)
        attempt = int(status.get("restarts") or 0)
        try:
            created = self._ensure_children(owner, spec, attempt, mlflow_status, status.get("startTime"))
        except ChildRefused as exc:
            patch.status.update(
                self._status_update(
                    body,
                    {"Failed": (True, exc.reason, str(exc)), "Created": (False, exc.reason, str(exc))},
                    failure={"reason": exc.reason, "message": str(exc)[:1024]},
                    **({"mlflow": mlflow_status} if mlflow_status else {}),
                )
            )
            self._event(body, "Warning", exc.reason, str(exc))
            self._update_run(
                spec, {"mlflow": mlflow_status}, "end", lambda mlflow, run_id: mlflow.end(run_id, "FAILED")
            )
            return
        except Exception as exc:
            delay = self.settings.create_retry_seconds
            message = f"could not create the trainer's objects, retrying in {delay:g} s: {_describe(exc)}"
            patch.status.update(
                self._status_update(
                    body,
                    {"Created": (False, "CreateRetrying", message)},
                    **({"mlflow": mlflow_status} if mlflow_status else {}),
                )
            )
            self._event(body, "Warning", "CreateRetrying", message)
            raise kopf.TemporaryError(message, delay=delay) from exc
        fields: dict[str, Any] = {
            "jobName": manifests.job_name(owner, attempt),
            "serviceName": manifests.service_name(owner),
            "restarts": attempt,
            "startTime": status.get("startTime") or conditions.now(),
            "outputModelUri": spec.output.uri,
            "progress": status.get("progress") or self._initial_progress(spec, bool(mlflow_status)),
        }
        if mlflow_status:
            fields["mlflow"] = mlflow_status
        suspended = spec.run_policy.suspend
        patch.status.update(
            self._status_update(
                body,
                {
                    "Created": (True, "JobCreated", f"Job {fields['jobName']} with {spec.workers} worker(s)"),
                    "Suspended": (suspended, "Suspended" if suspended else "NotSuspended", "runPolicy.suspend"),
                },
                **fields,
            )
        )
        if created:
            self._event(body, "Normal", "CreatedJob", f"created Job {fields['jobName']}")

    def _initial_progress(self, spec: UnlearningJobSpec, tracked: bool) -> dict[str, Any]:
        """Step 0 of N when an MLflow run will carry the trainer's steps; otherwise no percentage (a 0% that
        never moves would mislead) but the reason, since trainer pods have no other way to report."""
        total = spec.training.steps
        if tracked:
            return {"step": 0, "totalSteps": total, "percent": 0}
        if self.mlflow_for(spec) is None:
            why = "no MLflow server is configured (spec.tracking.mlflowTrackingUri, or the chart's mlflow.trackingUri)"
        else:
            why = "the MLflow run could not be created (see the MLflowUnavailable event)"
        return {"totalSteps": total, "message": f"progress is not reported: {why}; trainers report steps to MLflow"}

    def _create_run(self, body: dict[str, Any], owner: manifests.Owner, spec: UnlearningJobSpec) -> dict[str, str]:
        mlflow = self.mlflow_for(spec)
        if mlflow is None:
            return {}
        tags = {
            "unlearning.dev/job": owner.name,
            "unlearning.dev/namespace": owner.namespace,
            "unlearning.dev/uid": owner.uid,
            "unlearning.dev/method": spec.method.name,
        }
        try:
            run, created = mlflow.ensure(spec.tracking.experiment, f"{owner.namespace}/{owner.name}", tags)
        except Exception as exc:
            self._event(body, "Warning", "MLflowUnavailable", f"could not create the MLflow run: {exc}")
            return {}
        if created:
            self._event(body, "Normal", "MLflowRunCreated", f"MLflow run {run['runId']}")
        return run

    def _ensure_children(
        self,
        owner: manifests.Owner,
        spec: UnlearningJobSpec,
        attempt: int,
        mlflow_status: dict[str, str],
        start_time: str | None,
    ) -> bool:
        """Create the ConfigMap, Service and this attempt's Job if missing. Returns whether the Job was created."""
        mlflow_env = None
        tracking_uri = manifests.resolved_spec(spec, self.settings).tracking.mlflow_tracking_uri
        if mlflow_status.get("runId") and tracking_uri:
            mlflow_env = {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_EXPERIMENT_ID": mlflow_status["experimentId"],
                "MLFLOW_RUN_ID": mlflow_status["runId"],
            }
        deadline = _remaining_deadline(spec.run_policy.active_deadline_seconds, start_time)
        try:
            self.kube.create_or_adopt(manifests.build_service_account(owner.namespace, self.settings))
            self.kube.create_or_adopt(manifests.build_configmap(owner, spec, self.settings))
            self.kube.create_or_adopt(manifests.build_service(owner, self.settings))
            job = manifests.build_job(
                owner, spec, self.settings, attempt=attempt, mlflow_env=mlflow_env, active_deadline_seconds=deadline
            )
            _, created = self.kube.create_or_adopt(job)
        except OwnershipError as exc:
            raise ChildRefused("NameClash", f"{exc}; rename the UnlearningJob or remove that object") from exc
        except ApiException as exc:
            refusal = _refusal(exc)
            if refusal is None:
                raise
            raise ChildRefused(*refusal) from exc
        return created

    # ----- following the trainer Job --------------------------------------------------------------------------

    def sync(self, namespace: str, name: str) -> None:
        """Mirror the current attempt's Job into the UnlearningJob status; restart or finish as needed.

        The Job watch and the timer both call this, from kopf's thread pool: one lock per resource keeps them
        from judging the same attempt twice, and every status write is conditional on the resourceVersion
        that was read, so a decision taken on a stale read is dropped instead of overwriting a newer one.
        """
        with self._locks[(namespace, name)]:
            try:
                self._sync(namespace, name)
            except StaleError as exc:
                logger.info("%s; the next event decides again", exc)

    def _sync(self, namespace: str, name: str) -> None:
        body = self.kube.get_unlearning_job(namespace, name)
        if body is None or (body.get("status") or {}).get("phase") in TERMINAL:
            return
        status = body.get("status") or {}
        if "jobName" not in status:
            return
        try:
            spec = parse_spec(body.get("spec"))
        except SpecError:
            return
        job = self.kube.get_job(namespace, status["jobName"])
        if job is None:
            self._recreate(body, spec, int(status.get("restarts") or 0))
            return
        if job["metadata"].get("deletionTimestamp"):
            return
        pods = self.kube.list_pods(namespace, status["jobName"])
        seen = observe(job, pods, manifests.PERMANENT_EXIT_CODES)
        if seen.state == "Failed":
            self._handle_failure(body, spec, seen)
        elif seen.state == "Succeeded":
            self._finish(body, spec, seen, succeeded=True)
        elif seen.state == "Running":
            suspended = (False, "Running", "")
            if _kueue_managed(body) and spec.run_policy.suspend:
                suspended = (False, "SuspendRequested", KUEUE_SUSPEND_PENDING)
            self._transition(body, {"Running": (True, seen.reason, seen.message), "Suspended": suspended})
        elif seen.state == "Suspended" and _kueue_managed(body) and not spec.run_policy.suspend:
            queue = body["metadata"]["labels"][manifests.QUEUE_LABEL]
            message = f"waiting for Kueue to admit the trainer Job (queue {queue})"
            self._transition(body, {"Running": (False, "Queued", message), "Suspended": (False, "Queued", message)})
        elif seen.state == "Suspended":
            self._transition(
                body, {"Running": (False, "Suspended", seen.message), "Suspended": (True, seen.reason, seen.message)}
            )
        if _kueue_managed(body) and spec.run_policy.suspend and seen.state not in TERMINAL:
            # Suspended before Kueue created the Workload (for instance at creation): deactivate it once it exists.
            self._set_workload_active(namespace, status["jobName"], active=False)

    def _recreate(self, body: dict[str, Any], spec: UnlearningJobSpec, attempt: int) -> None:
        """Create the children of `attempt` (a restart, or a Job that went missing); fail the job if refused."""
        status = body.get("status") or {}
        owner = manifests.Owner.from_body(body)
        try:
            self._ensure_children(owner, spec, attempt, status.get("mlflow") or {}, status.get("startTime"))
        except ChildRefused as exc:
            current = self.kube.get_unlearning_job(owner.namespace, owner.name)
            if current is not None:
                seen = Observation("Failed", exc.reason, str(exc), Failure(None, exc.reason, str(exc)), permanent=True)
                self._finish(current, spec, seen, succeeded=False)

    def _transition(
        self, body: dict[str, Any], updates: dict[str, tuple[bool | None, str, str]], **fields: Any
    ) -> None:
        meta = body["metadata"]
        before = conditions.phase((body.get("status") or {}).get("conditions") or [])
        patch = self._status_update(body, updates, **fields)
        self.kube.patch_status(meta["namespace"], meta["name"], patch, resource_version=meta.get("resourceVersion"))
        if patch["phase"] != before:
            kind = "Warning" if patch["phase"] == "Failed" else "Normal"
            self._event(body, kind, patch["phase"], patch.get("message", "") or patch["phase"])

    def _handle_failure(self, body: dict[str, Any], spec: UnlearningJobSpec, seen: Observation) -> None:
        status = body.get("status") or {}
        decision = policy.after_failure(seen, status, spec.run_policy.backoff_limit)
        if isinstance(decision, policy.Fail):
            self._finish(body, spec, decision.observation, succeeded=False)
            return
        owner = manifests.Owner.from_body(body)
        attempt, message = decision.attempt, decision.message
        failure = seen.failure.as_status() if seen.failure else {"reason": seen.reason, "message": seen.message}
        self._transition(
            body,
            {"Running": (False, "Restarting", message[:1024])},
            restarts=attempt,
            preemptions=decision.preemptions,
            jobName=manifests.job_name(owner, attempt),
            lastRestart={"attempt": attempt, "time": conditions.now(), **failure},
        )
        self.kube.delete_job(owner.namespace, status["jobName"])
        self._recreate(body, spec, attempt)
        self._event(body, "Warning", "Restarting", message)
        tags = {
            "unlearning.dev/restarts": str(attempt),
            "unlearning.dev/preemptions": str(decision.preemptions),
            "unlearning.dev/last-restart-reason": seen.reason,
        }
        self._update_run(spec, status, "tag", lambda mlflow, run_id: mlflow.set_tags(run_id, tags))

    def _update_run(
        self,
        spec: UnlearningJobSpec,
        status: dict[str, Any],
        what: str,
        action: Callable[[MlflowRuns, str], None],
    ) -> None:
        """Apply `action` to the job's MLflow run, if it has one; MLflow being down never blocks the operator."""
        run_id = (status.get("mlflow") or {}).get("runId")
        mlflow = self.mlflow_for(spec)
        if not run_id or mlflow is None:
            return
        try:
            action(mlflow, run_id)
        except Exception as exc:
            logger.warning("could not %s MLflow run %s: %s", what, run_id, exc)

    def _finish(self, body: dict[str, Any], spec: UnlearningJobSpec, seen: Observation, *, succeeded: bool) -> None:
        status = body.get("status") or {}
        total = spec.training.steps
        fields: dict[str, Any] = {"completionTime": conditions.now()}
        if succeeded:
            resumed_from = seen.resumed_from
            if resumed_from is None:
                resumed_from = (status.get("progress") or {}).get("resumedFrom")
            fields["progress"] = _progress(seen.step or total, total, resumed_from) | {"percent": 100}
            fields["audit"] = {"uri": _audit_uri(spec), "passed": seen.audit_passed}
            updates = {
                "Succeeded": (True, seen.reason, seen.message),
                "Running": (False, "Completed", seen.message),
            }
        else:
            fields["failure"] = seen.failure.as_status() if seen.failure else {"reason": seen.reason}
            updates = {"Failed": (True, seen.reason, seen.message[:1024]), "Running": (False, seen.reason, "")}
        self._transition(body, updates, **fields)
        outcome = "FINISHED" if succeeded else "FAILED"
        self._update_run(spec, status, "end", lambda mlflow, run_id: mlflow.end(run_id, outcome))
        ttl = spec.run_policy.ttl_seconds_after_finished
        if ttl is not None and status.get("jobName"):
            self.kube.patch_job(
                body["metadata"]["namespace"], status["jobName"], {"spec": {"ttlSecondsAfterFinished": ttl}}
            )

    # ----- suspend, progress, delete ----------------------------------------------------------------------------

    def set_suspended(self, body: dict[str, Any], suspended: bool) -> None:
        """Suspend or resume the trainer Job, or, where Kueue manages it, its Workload: Kueue owns
        `Job.spec.suspend` for its jobs, and `Workload.spec.active` is how it is asked to stop or resume one."""
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL or "jobName" not in status:
            return
        meta = body["metadata"]
        if _kueue_managed(body):
            self._set_workload_active(meta["namespace"], status["jobName"], active=not suspended)
            if suspended:
                updates = {"Suspended": (False, "SuspendRequested", KUEUE_SUSPEND_PENDING)}
            else:
                updates = {"Suspended": (False, "Resumed", "Workload reactivated: Kueue admits it again")}
        else:
            self.kube.patch_job(meta["namespace"], status["jobName"], {"spec": {"suspend": suspended}})
            if suspended:
                updates = {
                    "Suspended": (True, "Suspended", "runPolicy.suspend is true"),
                    "Running": (False, "Suspended", ""),
                }
            else:
                updates = {"Suspended": (False, "Resumed", "resumed from the last checkpoint")}
        self._transition(body, updates)

    def _set_workload_active(self, namespace: str, job_name: str, *, active: bool) -> None:
        """Nothing happens while Kueue has not created the Workload yet; a later sync applies a pending
        suspension."""
        job = self.kube.get_job(namespace, job_name)
        if job is not None:
            self.kube.set_workload_active(namespace, job["metadata"]["uid"], active)

    def poll(self, body: dict[str, Any]) -> None:
        self.refresh_progress(body)
        meta = body["metadata"]
        self.sync(meta["namespace"], meta["name"])

    def refresh_progress(self, body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        run_id = (status.get("mlflow") or {}).get("runId")
        if status.get("phase") != "Running" or not run_id:
            return
        spec = parse_spec(body.get("spec"))
        mlflow = self.mlflow_for(spec)
        if mlflow is None:
            return
        seen = mlflow.progress(run_id)
        if seen is None:
            return
        before = status.get("progress") or {}
        progress = _progress(seen.step, spec.training.steps, seen.resumed_from)
        if progress == before:
            return
        meta = body["metadata"]
        self.kube.patch_status(meta["namespace"], meta["name"], {"progress": progress})
        if seen.resumed_from and seen.resumed_from != before.get("resumedFrom"):
            message = f"attempt {int(status.get('restarts') or 0) + 1} resumed from the checkpoint at step "
            self._event(body, "Normal", "Resumed", f"{message}{seen.resumed_from}")

    def cleanup(self, body: dict[str, Any]) -> None:
        """Mark an unfinished MLflow run as killed; children go with the owner through garbage collection."""
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL:
            return
        try:
            spec = parse_spec(body.get("spec"))
        except SpecError:
            return
        self._update_run(spec, status, "end", lambda mlflow, run_id: mlflow.end(run_id, "KILLED"))


class ChildRefused(Exception):
    """The API server refused a child for good (forbidden, invalid, a name taken by someone else's object)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _api_message(exc: ApiException) -> str:
    """The API server's own words (the Status message), not the client's HTTP dump."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


def _refusal(exc: ApiException) -> tuple[str, str] | None:
    """(reason, message) when retrying cannot help; None for what may pass later (quota, 5xx, throttling)."""
    message = _api_message(exc)
    if exc.status == 403 and "exceeded quota" not in message:
        return "Forbidden", f"the API server refused the operator: {message}"
    if exc.status in (400, 422):
        return "ChildInvalid", f"the API server refused a trainer object: {message}"
    return None


def _describe(exc: Exception) -> str:
    return _api_message(exc) if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"


def _progress(step: int, total: int, resumed_from: int | None) -> dict[str, int]:
    """status.progress; `resumedFrom` appears once a trainer attempt has reported where it started."""
    progress = {"step": step, "totalSteps": total, "percent": min(100, int(100 * step / total))}
    if resumed_from is not None:
        progress["resumedFrom"] = resumed_from
    return progress


def _kueue_managed(body: dict[str, Any]) -> bool:
    return manifests.QUEUE_LABEL in (body["metadata"].get("labels") or {})


def _audit_uri(spec: UnlearningJobSpec) -> str:
    return f"{spec.output.uri.rstrip('/')}/audit.json"


def _remaining_deadline(deadline: int | None, start_time: str | None) -> int | None:
    if deadline is None or start_time is None:
        return deadline
    started = datetime.strptime(start_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return deadline - int((datetime.now(timezone.utc) - started).total_seconds())


async def _poll(operator: Operator, namespaces: list[str] | None, interval: float) -> None:
    """Every `interval`: progress from MLflow and a sync of each unfinished job (a safety net for missed events).

    A plain task rather than a kopf timer: kopf timers put a finalizer on every resource, which would leave
    UnlearningJobs, and their namespaces, stuck in deletion whenever the operator is not running.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            bodies = await asyncio.to_thread(operator.kube.list_unlearning_jobs, namespaces)
        except Exception as exc:
            logger.warning("could not list UnlearningJobs: %s", exc)
            continue
        for body in bodies:
            if (body.get("status") or {}).get("phase") in TERMINAL:
                continue
            try:
                await asyncio.to_thread(operator.poll, body)
            except Exception as exc:
                logger.warning("polling %s failed: %s", body["metadata"]["name"], exc)


def build_registry(
    settings: Settings,
    kube: Kubernetes,
    *,
    namespaces: list[str] | None = None,
    server: str | None = None,
    mlflow: MlflowRuns | None = None,
) -> kopf.OperatorRegistry:
    """A registry with every handler bound to `settings` and `kube`, for `namespaces` (None: all of them);
    `server` adds a login for that API URL."""
    registry = kopf.OperatorRegistry()
    operator = Operator(settings, kube, mlflow)
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.watching.server_timeout = 300
        settings.posting.level = logging.INFO
        # Watching named namespaces needs no cluster-wide reads: without scanning, kopf neither lists
        # namespaces nor watches CRDs, so the namespaced chart grants nothing outside its namespaces.
        settings.scanning.disabled = namespaces is not None
        # The API server sends only the operator's own Jobs, not every Job in the cluster.
        settings.watching.label_selectors["batch", "jobs"] = manifests.JOB_LABEL

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """`server` (tests against an emulator), else in-cluster credentials or the kubeconfig, as kopf's
        default registry would: a plain OperatorRegistry has no login handler of its own."""
        if server is not None:
            return kopf.ConnectionInfo(server=server, insecure=True)
        return kopf.login_via_client(**kwargs)

    @kopf.on.create(*resource, registry=registry)
    @kopf.on.resume(*resource, registry=registry)
    def start(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        operator.start(dict(body), patch)

    @kopf.on.field(*resource, field="spec.runPolicy.suspend", registry=registry)
    def suspend(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
        if old is None and not new:
            return
        operator.set_suspended(dict(body), bool(new))

    @kopf.on.event("batch", "v1", "jobs", labels={manifests.JOB_LABEL: kopf.PRESENT}, registry=registry)
    def job_event(body: kopf.Body, **_: Any) -> None:
        labels = body.get("metadata", {}).get("labels", {})
        operator.sync(body["metadata"]["namespace"], labels[manifests.JOB_LABEL])

    @kopf.on.startup(registry=registry)
    async def start_polling(memo: kopf.Memo, **_: Any) -> None:
        memo["poller"] = asyncio.create_task(_poll(operator, namespaces, settings.progress_poll_seconds))

    @kopf.on.cleanup(registry=registry)
    async def stop_polling(memo: kopf.Memo, **_: Any) -> None:
        memo["poller"].cancel()

    @kopf.on.event(*resource, registry=registry)
    def deleted(body: kopf.Body, type: str | None, **_: Any) -> None:
        """Best effort and without a finalizer (a deletion never waits for the operator): the children go
        with their owner through garbage collection; an unfinished MLflow run is marked killed."""
        if type == "DELETED":
            operator.cleanup(dict(body))

    return registry
