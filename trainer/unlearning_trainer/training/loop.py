"""The unlearning fine-tune: build → prepare → resume → loop (step, log, evaluate, checkpoint) → save.

Global batch = `training.batchSize` = per-process micro-batch × processes × `gradientAccumulationSteps`.
Only rank 0 evaluates, logs and writes files; every rank computes the same update.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from unlearning_trainer.data.images import Images
from unlearning_trainer.data.sampling import InfiniteSampler, generator_for, seed_for
from unlearning_trainer.evaluation.evaluator import Evaluator
from unlearning_trainer.models.adapter import DiffusionAdapter
from unlearning_trainer.objectives.losses import draw_noise
from unlearning_trainer.objectives.methods import Objective
from unlearning_trainer.spec import UnlearningJobSpec
from unlearning_trainer.tracking.base import Tracker
from unlearning_trainer.training import checkpoints
from unlearning_trainer.training.fingerprint import check_resume
from unlearning_trainer.training.neighbours import Neighbours
from unlearning_trainer.training.step import MicroBatch, Stepper

logger = logging.getLogger("unlearning_trainer.training")

ProgressCallback = Callable[[int, int], None]
GLOBAL_RNG_STREAM = 1
"""Tells the per-step reseed of the global torch RNG (dropout) apart from the (step, micro-batch) noise streams."""
RESUMED_METRIC = "progress/resumedFrom"
"""Logged once per attempt at the step it starts from (0 for a fresh start), so every resume shows in MLflow."""


@dataclass(frozen=True)
class TrainingData:
    retain: Images
    forget: Images
    neighbours: Neighbours | None = None
    """ReTrack only: each forget image's nearest retain images (training/neighbours.py)."""


@dataclass
class TrainingResult:
    steps: int
    resumed_from: int
    history: list[dict[str, Any]]
    interrupted: bool = False
    train_seconds: float = 0.0
    """Wall time inside optimizer steps only (no evaluation, no checkpoints)."""
    stopped_early: bool = False
    """training.stopWhen was met before training.steps."""


class _Preemption:
    """SIGTERM only sets a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("SIGTERM received: checkpointing at the end of this step, then stopping")
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _micro_batches(
    spec: UnlearningJobSpec,
    adapter: DiffusionAdapter,
    data: TrainingData,
    samplers: tuple[InfiniteSampler, InfiniteSampler],
    unet: torch.nn.Module,
    accelerator: Accelerator,
    step: int,
) -> list[MicroBatch]:
    """The micro-batches of optimizer step `step` for this process; identical globally for any world size."""
    accumulation = spec.training.gradient_accumulation_steps
    global_size = spec.training.batch_size // accumulation
    world, rank = accelerator.num_processes, accelerator.process_index
    local = global_size // world
    batches = []
    for micro in range(accumulation):
        index = step * accumulation + micro
        keep_idx = samplers[0].micro_batch(index, global_size, rank=rank, world_size=world)
        forget_idx = samplers[1].micro_batch(index, global_size, rank=rank, world_size=world)
        neighbours = None if data.neighbours is None else data.neighbours.take(forget_idx).to(accelerator.device)
        keep_images, keep_captions = data.retain.take(keep_idx)
        forget_images, forget_captions = data.forget.take(forget_idx)
        keep = adapter.to_diffusion_space(keep_images.to(accelerator.device))
        forget = adapter.to_diffusion_space(forget_images.to(accelerator.device))
        generator = generator_for(spec.training.seed, step, micro)
        noise = draw_noise((global_size, *keep.shape[1:]), adapter.alphas_cumprod, generator)
        batches.append(
            MicroBatch(
                keep=keep,
                forget=forget,
                denoise_keep=adapter.denoiser(unet, keep_captions),
                denoise_forget=adapter.denoiser(unet, forget_captions),
                noise=noise.rows(rank * local, (rank + 1) * local).to(accelerator.device),
                neighbours=neighbours,
            )
        )
    return batches


def train(
    spec: UnlearningJobSpec,
    adapter: DiffusionAdapter,
    data: TrainingData,
    *,
    accelerator: Accelerator,
    evaluator: Evaluator | None,
    tracker: Tracker,
    checkpoint_dir: Path,
    checkpoint_mirror: checkpoints.Mirror | None = None,
    fingerprint: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    show_progress: bool = True,
) -> TrainingResult:
    """Fine-tune `adapter.unet` in place with the objective of `spec.method`.

    `fingerprint` (training/fingerprint.py) goes into every checkpoint; a checkpoint with another one is not
    resumed (ResumeMismatch).
    """
    training = spec.training
    adapter.unet.train()
    if training.gradient_checkpointing:
        adapter.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        [p for p in adapter.unet.parameters() if p.requires_grad],
        lr=training.learning_rate,
        betas=(training.adam_beta1, training.adam_beta2),
        weight_decay=training.weight_decay,
    )
    unet, optimizer = accelerator.prepare(adapter.unet, optimizer)
    scheduler = get_scheduler(
        training.lr_scheduler,
        optimizer,
        num_warmup_steps=training.lr_warmup_steps,
        num_training_steps=training.steps,
    )
    raw_unet = accelerator.unwrap_model(unet)
    stepper = Stepper(
        Objective(spec.method),
        accelerator,
        unet,
        optimizer,
        max_grad_norm=training.max_grad_norm,
        refresh_every=spec.method.forget_norm_refresh_every,
        scheduler=scheduler,
    )
    with accelerator.local_main_process_first():
        if checkpoint_mirror is not None and not checkpoints.list_checkpoints(checkpoint_dir):
            checkpoint_mirror.pull(checkpoint_dir)
    state = checkpoints.load_latest(checkpoint_dir, raw_unet, optimizer, scheduler) or checkpoints.TrainingState()
    if state.step and fingerprint is not None:
        check_resume(state.fingerprint, fingerprint, step=state.step)
    state.fingerprint = fingerprint
    resumed_from = state.step
    stepper.cached_scale = state.cached_forget_scale
    if resumed_from:
        logger.info("resuming from checkpoint at step %d of %d", resumed_from, training.steps)
    samplers = (
        InfiniteSampler(len(data.retain), training.seed),
        InfiniteSampler(len(data.forget), training.seed + 1),
    )
    main = accelerator.is_main_process
    if main:
        tracker.log_metrics({RESUMED_METRIC: float(resumed_from)}, step=resumed_from)

    def evaluate(step: int) -> None:
        if main and evaluator is not None:
            metrics = evaluator(raw_unet, step)
            state.history.append({"step": step, **metrics})
            tracker.log_metrics({f"eval/{key}": value for key, value in metrics.items()}, step=step)
        accelerator.wait_for_everyone()

    def checkpoint() -> None:
        state.cached_forget_scale = stepper.cached_scale
        if main:
            folder = checkpoints.save(
                checkpoint_dir, raw_unet, optimizer, scheduler, state, keep=training.checkpoints_to_keep
            )
            if checkpoint_mirror is not None:
                checkpoint_mirror.push(folder, keep=training.checkpoints_to_keep)
            logger.info("checkpoint saved at step %d", state.step)
        accelerator.wait_for_everyone()

    if resumed_from == 0:
        evaluate(0)
    bar = tqdm(
        total=training.steps,
        initial=resumed_from,
        desc=f"unlearning ({spec.method.name})",
        disable=not (main and show_progress),
    )
    interrupted = False
    train_seconds = 0.0
    met = _request_met(spec, state.history, accelerator)
    last = resumed_from if met else training.steps  # a run that stopped early and is rerun has nothing left
    with _Preemption() as preemption:
        for step in range(resumed_from, last):
            started = time.perf_counter()
            torch.manual_seed(seed_for(training.seed, step, accelerator.process_index, GLOBAL_RNG_STREAM))
            stats = stepper(step, _micro_batches(spec, adapter, data, samplers, unet, accelerator, step))
            train_seconds += time.perf_counter() - started
            state.step = step + 1
            if main:
                metrics = {f"train/{key}": value for key, value in stats.items()}
                tracker.log_metrics(metrics | {"progress/step": float(state.step)}, step=state.step)
                bar.update(1)
                bar.set_postfix(loss_keep=stats.get("loss_keep"), loss_forget=stats.get("loss_forget"), refresh=False)
            if on_progress is not None:
                on_progress(state.step, training.steps)
            if state.step % spec.evaluation.every == 0 or state.step == training.steps:
                evaluate(state.step)
                met = _request_met(spec, state.history, accelerator)
            stop = _any_rank(accelerator, preemption.requested)
            if state.step % training.checkpoint_every == 0 or stop or met:
                checkpoint()
            if met:
                logger.info("training.stopWhen met at step %d of %d", state.step, training.steps)
                break
            if stop:
                interrupted = True
                break
    bar.close()
    return TrainingResult(
        steps=state.step,
        resumed_from=resumed_from,
        history=state.history,
        interrupted=interrupted,
        train_seconds=train_seconds,
        stopped_early=met and state.step < training.steps,
    )


def _request_met(spec: UnlearningJobSpec, history: list[dict[str, Any]], accelerator: Accelerator) -> bool:
    """training.stopWhen against the evaluations so far (only rank 0 evaluates; every rank learns the answer)."""
    rule = spec.training.stop_when
    return rule is not None and _any_rank(accelerator, accelerator.is_main_process and rule.met(history))


def _any_rank(accelerator: Accelerator, local: bool) -> bool:
    """True on every rank as soon as it is true on one (a SIGTERM, or rank 0's evaluation verdict)."""
    if accelerator.num_processes == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
