"""Run one UnlearningJob on this machine: resolve storage, load model and data, train, evaluate, publish.

This is the only place that wires the pieces together; the CLI (`unlearn run`) and the Kubernetes trainer
pods both call `run_job`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearning_trainer import __version__, audit
from unlearning_trainer.errors import DataError, SpecError
from unlearning_trainer.spec import FP16_NEEDS_A_GPU, UnlearningJob, UnlearningJobSpec, dump_job
from unlearning_trainer.storage.base import checkpoint_mirror_for, storage_for
from unlearning_trainer.tracking.base import FanOutTracker, LogTracker, NullTracker, Tracker
from unlearning_trainer.training.fingerprint import fingerprint

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from unlearning_trainer.data.images import Images
    from unlearning_trainer.models.adapter import DiffusionAdapter
    from unlearning_trainer.training.neighbours import Neighbours

logger = logging.getLogger("unlearning_trainer.runner")

SAMPLING_FORM = "retain"
"""Keep images are drawn from the retain set p_{X\\A} (see objectives/losses.py)."""


@dataclass
class RunResult:
    output: Path
    metrics: dict[str, Any]


def resolve_local_uris(job: UnlearningJob, base: Path) -> UnlearningJob:
    """Make relative local paths in the spec relative to `base` (the job file's folder)."""

    def resolve(uri: str) -> str:
        if "://" in uri or Path(uri).expanduser().is_absolute():
            return uri
        return str((base / uri).resolve())

    spec = job.spec
    data = spec.data.model_copy(
        update={
            name: location.model_copy(update={"uri": resolve(location.uri)})
            for name in ("forget", "train", "retain", "holdout")
            if (location := getattr(spec.data, name)) is not None and location.uri is not None
        }
    )
    evaluation = spec.evaluation
    if evaluation.classifier is not None:
        classifier = evaluation.classifier.model_copy(update={"uri": resolve(evaluation.classifier.uri)})
        evaluation = evaluation.model_copy(update={"classifier": classifier})
    spec = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"uri": resolve(spec.model.uri)}),
            "output": spec.output.model_copy(update={"uri": resolve(spec.output.uri)}),
            "data": data,
            "evaluation": evaluation,
        }
    )
    return job.model_copy(update={"spec": spec})


def _params(job: UnlearningJob, data: dict[str, Any]) -> dict[str, Any]:
    spec = job.spec
    method = spec.method.model_dump(by_alias=True)
    training = spec.training.model_dump(by_alias=True)
    return {
        **{f"method.{key}": value for key, value in method.items()},
        **{f"training.{key}": value for key, value in training.items()},
        "workers": spec.workers,
        "samplingForm": SAMPLING_FORM,
        "data.retainFrom": data["retainFrom"],
        "data.forgetSize": data["forget"],
        "data.forgetUnique": data["forgetUnique"],
        "data.retainSize": data["retain"],
        "data.excluded": data["excluded"],
        "data.holdoutSize": data["holdout"] or 0,
        "codeVersion": __version__,
    }


def make_tracker(job: UnlearningJob) -> Tracker:
    """Structured logs always; MLflow too when the spec or MLFLOW_TRACKING_URI names a server."""
    uri = job.spec.tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return LogTracker()
    from unlearning_trainer.tracking.mlflow_tracker import MlflowTracker

    meta = job.metadata
    tags = {
        "unlearning.dev/job": meta.name,
        "unlearning.dev/method": job.spec.method.name,
        "unlearning.dev/namespace": meta.namespace or "",
        "unlearning.dev/uid": str((meta.model_extra or {}).get("uid", "")),
        "unlearning.dev/request": job.spec.audit.request_id or "",
    }
    run_name = f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name
    mlflow = MlflowTracker(
        uri, job.spec.tracking.experiment, run_name=run_name, tags={k: v for k, v in tags.items() if v}
    )
    return FanOutTracker([LogTracker(), mlflow])


def run_job(
    job: UnlearningJob,
    *,
    tracker: Tracker | None = None,
    show_progress: bool = True,
    on_progress: Any = None,
    restart: bool = False,
) -> RunResult:
    """Run the job to completion (resuming from its latest checkpoint, or from the base model with `restart`,
    which deletes the output's checkpoints first) and publish the unlearned pipeline.

    Raises:
        UnlearningError: for problems with the spec, the storage, the model or the data; `metrics.json` then
            records the failure, and the latest checkpoint stays in place for a retry.
    """
    import torch
    from accelerate import Accelerator

    from unlearning_trainer.data.prepare import load_holdout, prepare_data
    from unlearning_trainer.evaluation.evaluator import Evaluator
    from unlearning_trainer.models.loading import load_adapter
    from unlearning_trainer.training.loop import Checkpointing, Reporting, TrainingData, train

    spec = job.spec
    endpoint = spec.storage.endpoint

    def fetch(uri: str, field: str) -> Path:
        return storage_for(uri, endpoint=endpoint).fetch(uri, field=field)

    output_storage = storage_for(spec.output.uri, endpoint=endpoint)
    workdir = output_storage.workdir(spec.output.uri)
    if spec.training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise SpecError(FP16_NEEDS_A_GPU)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=spec.training.mixed_precision)
    # SISS weights of e^-1000 scale keep-term gradients into float32's subnormal range, which x86 CPUs compute
    # about 100x slower: flushing them to zero made exact SISS 1.37x faster on a CPU (benchmarks/step_cost.py).
    torch.set_flush_denormal(True)
    main = accelerator.is_main_process
    if not main:
        tracker = NullTracker()
    elif tracker is None:
        tracker = make_tracker(job)
    started = time.perf_counter()
    try:
        model_dir = fetch(spec.model.uri, "spec.model.uri")
        model_digest = audit.model_digest(model_dir)
        adapter = load_adapter(model_dir)
        _prepare_unet(spec, adapter)
        adapter.to(accelerator.device)
        generate = _retain_generator(spec, adapter, accelerator, workdir, output_storage, model_digest)
        forget, retain, data_summary = prepare_data(spec, fetch, adapter.image_shape, generate)
        holdout = load_holdout(spec, fetch, adapter.image_shape, forget)
        data_summary["holdout"] = None if holdout is None else len(holdout)
        logger.info(
            "loaded %s model %s; forget set %d images (%d distinct), retain set %d images",
            adapter.kind,
            "x".join(map(str, adapter.image_shape)),
            len(forget),
            data_summary["forgetUnique"],
            len(retain),
        )
        tracker.log_params(_params(job, data_summary))
        classifier = None
        if spec.evaluation.classifier is not None:
            from unlearning_trainer.evaluation.quality import DomainClassifier

            classifier = DomainClassifier.load(fetch(spec.evaluation.classifier.uri, "spec.evaluation.classifier.uri"))
        evaluator = Evaluator(
            adapter,
            spec.evaluation,
            forget=forget,
            retain=retain,
            samples_dir=workdir / "samples",
            device=accelerator.device,
            classifier=classifier,
            holdout=holdout,
        )
        mirror = checkpoint_mirror_for(spec.output.uri, endpoint=endpoint)
        if restart:
            _discard_checkpoints(workdir, mirror if main else None)
        accelerator.wait_for_everyone()
        torch.manual_seed(spec.training.seed)
        result = train(
            spec,
            adapter,
            TrainingData(
                retain=retain,
                forget=forget,
                neighbours=_neighbours(spec, retain, forget, adapter, accelerator),
                keep_groups=_keep_groups(spec, retain, forget),
            ),
            accelerator=accelerator,
            checkpointing=Checkpointing(
                workdir / "checkpoints",
                mirror,
                fingerprint(spec, model_digest=model_digest, data_digest=data_summary["sha256"]),
            ),
            reporting=Reporting(tracker, evaluator, on_progress, show_progress),
        )
        metrics = {
            "status": "interrupted" if result.interrupted else "succeeded",
            "steps": result.steps,
            "stoppedEarly": result.stopped_early,
            "resumedFrom": result.resumed_from,
            "processes": accelerator.num_processes,
            "trainSeconds": result.train_seconds,
            "seconds": time.perf_counter() - started,
            "samplingForm": SAMPLING_FORM,
            "data": data_summary,
            "before": result.history[0] if result.history and result.history[0]["step"] == 0 else None,
            "after": result.history[-1] if result.history else None,
            "history": result.history,
            "forgetPercentiles": {
                "before": evaluator.forget_percentiles.get(0),
                "after": evaluator.forget_percentiles.get(result.steps),
            },
        }
        if main and spec.audit.relearning_steps and not result.interrupted:
            from unlearning_trainer.evaluation.relearning import relearning_probe

            unet = _published_unet(accelerator.unwrap_model(adapter.unet))
            metrics["relearning"] = relearning_probe(spec, adapter, unet, retain, evaluator, device=accelerator.device)
            tracker.log_metrics({f"relearning/{k}": v for k, v in metrics["relearning"].items()}, step=result.steps)
        if main:
            _finish(job, workdir, adapter, accelerator, tracker, metrics, output_storage, model_digest, forget)
    except Exception as exc:
        if main:
            _write_json(workdir / "metrics.json", _metrics_document(job, _failure(exc)))
            tracker.finish("FAILED")
        raise
    accelerator.wait_for_everyone()
    return RunResult(output=workdir, metrics=metrics)


def _retain_generator(
    spec: UnlearningJobSpec,
    adapter: Any,
    accelerator: Any,
    workdir: Path,
    output_storage: Any,
    model_digest: str,
) -> Any:
    """data.retain.generate: a function that makes (or reuses) the generated retain set for a forget set.

    The set lives in the output's `retain-generated/` folder and is published to the output store as soon as it
    is made, so a rerun, a resumed pod or another node trains on the same images. Rank 0 makes it; the others
    wait, then read it (from the shared folder, or from the store on another machine)."""
    from unlearning_trainer.data import generated

    if spec.data.retain is None or spec.data.retain.generate is None:
        return None
    folder = workdir / generated.FOLDER
    uri = f"{spec.output.uri.rstrip('/')}/{generated.FOLDER}"

    def make(forget: Any) -> Path:
        settings = generated.settings_of(spec, forget, model_digest)
        with accelerator.main_process_first():
            if not generated.is_current(folder, settings):
                _pull(output_storage, uri, folder)
            if generated.is_current(folder, settings):
                logger.info("reusing the generated retain set in %s", uri)
                return folder
            if not accelerator.is_main_process:
                raise DataError(f"{generated.FIELD}: rank 0 made no retain set at {uri} that this rank can read.")
            generated.generate_retain(adapter, settings, forget, folder)
            output_storage.publish(folder, uri)
        return folder

    return make


def _pull(storage: Any, uri: str, folder: Path) -> None:
    """Copy a generated retain set from the output store into `folder`, if the store has one."""
    from unlearning_trainer.data.generated import FIELD

    try:
        found = storage.fetch(uri, field=FIELD)
    except DataError:
        return
    if found.resolve() != folder.resolve():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(found, folder)


def _keep_groups(spec: UnlearningJobSpec, retain: Any, forget: Any) -> Any:
    """With a generated retain set of a text-to-image model: for each forget image, the retain images generated
    for its caption (so that each SISS pair shares it); None otherwise."""
    from unlearning_trainer.data.generated import caption_groups

    if spec.data.retain is None or spec.data.retain.generate is None or forget.captions is None:
        return None
    return caption_groups(forget.captions, retain.captions())


def _neighbours(
    spec: UnlearningJobSpec, retain: Images, forget: Images, adapter: DiffusionAdapter, accelerator: Accelerator
) -> Neighbours | None:
    """ReTrack's nearest retain images of each forget image; None for every other method."""
    from unlearning_trainer.objectives.methods import Objective
    from unlearning_trainer.training.neighbours import find_neighbours

    k = Objective(spec.method).neighbour_count
    if k is None:
        return None
    return find_neighbours(retain, forget, k, adapter.to_diffusion_space, accelerator.device)


def _discard_checkpoints(workdir: Path, mirror: Any) -> None:
    """A restart: the output's checkpoints and sample grids go, locally and (rank 0) in the output store."""
    for folder in ("checkpoints", "samples"):
        shutil.rmtree(workdir / folder, ignore_errors=True)
    if mirror is not None:
        mirror.clear()
    logger.info("restart: deleted the output's checkpoints; training starts from the base model")


def _finish(
    job: UnlearningJob,
    workdir: Path,
    adapter: Any,
    accelerator: Any,
    tracker: Tracker,
    metrics: dict[str, Any],
    output_storage: Any,
    model_digest: str,
    forget: Any,
) -> None:
    """Rank 0 after training: save the pipeline, write metrics and the audit record, log, publish, register."""
    spec = job.spec
    interrupted = metrics["status"] == "interrupted"
    if not interrupted:
        _save_output(spec, adapter, accelerator.unwrap_model(adapter.unet), workdir)
    tracking = tracker.health()
    metrics["tracking"] = tracking
    record = audit.build_record(
        job,
        forget_files=list(zip(forget.names, forget.digests, strict=True)),
        model_before=model_digest,
        model_after=None if interrupted else audit.model_digest(workdir),
        metrics=metrics,
        tracking=tracking,
    )
    metrics["verdict"] = record["verdict"]
    metrics_path = _write_json(workdir / "metrics.json", _metrics_document(job, metrics))
    audit_path = _write_json(workdir / "audit.json", record)
    for path in (metrics_path, audit_path):
        tracker.log_artifact(path)
    for grid in sorted((workdir / "samples").glob("*.png")):
        tracker.log_artifact(grid, "samples")
    if interrupted:
        tracker.finish("KILLED")
        return
    output_storage.publish(workdir, spec.output.uri)
    registered = spec.tracking.registered_model
    if registered is not None:
        version = tracker.register_model(registered.name, spec.output.uri, registered.alias)
        metrics["registeredModel"] = {"name": registered.name, "version": version, "alias": registered.alias}
    tracker.finish("FINISHED")
    metrics["tracking"] = tracker.health()


def _prepare_unet(spec: UnlearningJobSpec, adapter: DiffusionAdapter) -> None:
    """With method.adapter, add the LoRA layers that will train (the rest of the U-Net is frozen)."""
    if spec.method.adapter is None:
        return
    from unlearning_trainer.models.lora import add_lora

    if spec.output.format == "adapter" and adapter.kind != "latent":
        raise SpecError(
            "spec.output.format: adapter writes diffusers' LoRA format, which only text-to-image pipelines load "
            "(load_lora_weights), and this is a pixel-space DDPM. Fix: use output.format: pipeline."
        )
    total = sum(p.numel() for p in adapter.unet.parameters())
    trainable = add_lora(adapter.unet, spec.method.adapter, seed=spec.training.seed)
    logger.info("LoRA rank %d: %d of %d U-Net parameters train", spec.method.adapter.rank, trainable, total)


def _published_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The U-Net as published: a trained LoRA adapter merged into plain layers, else the U-Net itself."""
    from unlearning_trainer.models.lora import has_lora, merged

    return merged(unet) if has_lora(unet) else unet


def _save_output(spec: UnlearningJobSpec, adapter: DiffusionAdapter, unet: torch.nn.Module, workdir: Path) -> None:
    """The pipeline (or the adapter alone) into a staging folder, then its entries moved into place."""
    staging = workdir / ".staging-model"
    shutil.rmtree(staging, ignore_errors=True)
    if spec.output.format == "adapter":
        from unlearning_trainer.models.lora import save_adapter

        staging.mkdir(parents=True)
        save_adapter(unet, staging, spec.method.adapter)
    else:
        adapter.save(_published_unet(unet), staging)
    for entry in staging.iterdir():
        target = workdir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.rename(target)
    staging.rmdir()


def _failure(exc: Exception) -> dict[str, Any]:
    return {"status": "failed", "reason": getattr(exc, "reason", "TrainerError"), "message": str(exc)}


def _metrics_document(job: UnlearningJob, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"job": job.metadata.name, "spec": dump_job(job)["spec"], **metrics}


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path
