"""Run one UnlearningJob on this machine: resolve storage, load model and data, train, evaluate, publish.

This is the only place that wires the pieces together; the CLI (`unlearn run`) and the Kubernetes trainer
pods both call `run_job`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearning_trainer import __version__
from unlearning_trainer.spec import UnlearningJob, dump_job
from unlearning_trainer.storage.base import storage_for
from unlearning_trainer.tracking.base import LogTracker, NullTracker, Tracker

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
            "forget": spec.data.forget.model_copy(update={"uri": resolve(spec.data.forget.uri)}),
            "retain": spec.data.retain.model_copy(update={"uri": resolve(spec.data.retain.uri)}),
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


def _params(job: UnlearningJob, forget_size: int, forget_unique: int, retain_size: int) -> dict[str, Any]:
    spec = job.spec
    method = spec.method.model_dump(by_alias=True)
    training = spec.training.model_dump(by_alias=True)
    return {
        **{f"method.{key}": value for key, value in method.items()},
        **{f"training.{key}": value for key, value in training.items()},
        "workers": spec.workers,
        "samplingForm": SAMPLING_FORM,
        "data.forgetSize": forget_size,
        "data.forgetUnique": forget_unique,
        "data.retainSize": retain_size,
        "codeVersion": __version__,
    }


def run_job(
    job: UnlearningJob,
    *,
    tracker: Tracker | None = None,
    show_progress: bool = True,
    on_progress: Any = None,
) -> RunResult:
    """Run the job to completion (resuming from its latest checkpoint) and publish the unlearned pipeline.

    Raises:
        UnlearningError: for problems with the spec, the model or the data; `metrics.json` then records the
            failure, and the latest checkpoint stays in place for a retry.
    """
    import torch
    from accelerate import Accelerator

    from unlearning_trainer.data.imagefolder import load_image_folder
    from unlearning_trainer.evaluation.evaluator import Evaluator
    from unlearning_trainer.models.loading import load_adapter
    from unlearning_trainer.training.loop import TrainingData, train

    spec = job.spec
    output_storage = storage_for(spec.output.uri)
    workdir = output_storage.workdir(spec.output.uri)
    accelerator = Accelerator()
    main = accelerator.is_main_process
    tracker = (tracker or LogTracker()) if main else NullTracker()
    started = time.perf_counter()
    try:
        model_dir = storage_for(spec.model.uri).fetch(spec.model.uri, field="spec.model.uri")
        adapter = load_adapter(model_dir)
        forget = load_image_folder(
            storage_for(spec.data.forget.uri).fetch(spec.data.forget.uri, field="spec.data.forget.uri"),
            field="spec.data.forget.uri",
            image_shape=adapter.image_shape,
        )
        retain = load_image_folder(
            storage_for(spec.data.retain.uri).fetch(spec.data.retain.uri, field="spec.data.retain.uri"),
            field="spec.data.retain.uri",
            image_shape=adapter.image_shape,
        )
        logger.info(
            "loaded %s model %s; forget set %d images (%d distinct), retain set %d images",
            adapter.kind,
            "x".join(map(str, adapter.image_shape)),
            len(forget),
            len(forget.unique()),
            len(retain),
        )
        adapter.unet.to(accelerator.device)
        tracker.log_params(_params(job, len(forget), len(forget.unique()), len(retain)))
        classifier = None
        if spec.evaluation.classifier is not None:
            from unlearning_trainer.evaluation.quality import DomainClassifier

            uri = spec.evaluation.classifier.uri
            classifier = DomainClassifier.load(storage_for(uri).fetch(uri, field="spec.evaluation.classifier.uri"))
        evaluator = Evaluator(
            adapter,
            spec.evaluation,
            forget=forget,
            retain=retain,
            samples_dir=workdir / "samples",
            device=accelerator.device,
            classifier=classifier,
        )
        torch.manual_seed(spec.training.seed)
        result = train(
            spec,
            adapter,
            TrainingData(retain=retain, forget=forget),
            accelerator=accelerator,
            evaluator=evaluator,
            tracker=tracker,
            checkpoint_dir=workdir / "checkpoints",
            on_progress=on_progress,
            show_progress=show_progress,
        )
    except Exception as exc:
        if main:
            _write_metrics(
                workdir,
                job,
                {"status": "failed", "reason": getattr(exc, "reason", "TrainerError"), "message": str(exc)},
            )
        tracker.finish("FAILED")
        raise
    metrics = {
        "status": "interrupted" if result.interrupted else "succeeded",
        "steps": result.steps,
        "resumedFrom": result.resumed_from,
        "seconds": time.perf_counter() - started,
        "samplingForm": SAMPLING_FORM,
        "data": {"forget": len(forget), "forgetUnique": len(forget.unique()), "retain": len(retain)},
        "before": result.history[0] if result.history and result.history[0]["step"] == 0 else None,
        "after": result.history[-1] if result.history else None,
        "history": result.history,
    }
    if main and not result.interrupted:
        staging = workdir / ".staging-model"
        shutil.rmtree(staging, ignore_errors=True)
        adapter.save(accelerator.unwrap_model(adapter.unet), staging)
        for entry in staging.iterdir():
            target = workdir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            entry.rename(target)
        staging.rmdir()
    if main:
        path = _write_metrics(workdir, job, metrics)
        tracker.log_artifact(path)
        output_storage.publish(workdir, spec.output.uri)
        tracker.finish("KILLED" if result.interrupted else "FINISHED")
    accelerator.wait_for_everyone()
    return RunResult(output=workdir, metrics=metrics)


def _write_metrics(workdir: Path, job: UnlearningJob, metrics: dict[str, Any]) -> Path:
    path = workdir / "metrics.json"
    document = {"job": job.metadata.name, "spec": dump_job(job)["spec"], **metrics}
    path.write_text(json.dumps(document, indent=2))
    return path
