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

from unlearning_trainer.data.generated import paired_keep_indices
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
    keep_groups: list[torch.Tensor] | None = None
    """For each forget image, the retain images that share its caption; when set, each micro-batch pairs a
    forget image with keep images of its own caption (data.retain.generate, data/generated.py)."""


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
        if data.keep_groups is not None:
            keep_idx = paired_keep_indices(keep_idx, forget_idx, data.keep_groups)
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


@dataclass(frozen=True)
class Checkpointing:
    folder: Path
    mirror: checkpoints.Mirror | None = None
    """Copies checkpoints to the output store (S3), so that a new pod resumes where the last one stopped."""
    fingerprint: dict[str, Any] | None = None
    """What shapes the weights (training/fingerprint.py); a checkpoint with another one is not resumed."""


@dataclass(frozen=True)
class Reporting:
    tracker: Tracker
    evaluator: Evaluator | None = None
    on_progress: ProgressCallback | None = None
    show_progress: bool = True


class _Session:
    """One call to `train`: the prepared model, optimizer and schedule, the resumed state, and the phases of the
    loop (step, log, evaluate, checkpoint). Only rank 0 evaluates, logs and writes; every rank steps."""

    def __init__(
        self,
        spec: UnlearningJobSpec,
        adapter: DiffusionAdapter,
        data: TrainingData,
        accelerator: Accelerator,
        checkpointing: Checkpointing,
        reporting: Reporting,
    ) -> None:
        training = spec.training
        self.spec, self.adapter, self.data, self.accelerator = spec, adapter, data, accelerator
        self.checkpointing, self.reporting = checkpointing, reporting
        self.main = accelerator.is_main_process
        adapter.unet.train()
        if training.gradient_checkpointing:
            adapter.unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(
            [p for p in adapter.unet.parameters() if p.requires_grad],
            lr=training.learning_rate,
            betas=(training.adam_beta1, training.adam_beta2),
            weight_decay=training.weight_decay,
        )
        self.unet, self.optimizer = accelerator.prepare(adapter.unet, optimizer)
        self.scheduler = get_scheduler(
            training.lr_scheduler,
            self.optimizer,
            num_warmup_steps=training.lr_warmup_steps,
            num_training_steps=training.steps,
        )
        self.raw_unet = accelerator.unwrap_model(self.unet)
        self.stepper = Stepper(
            Objective(spec.method),
            accelerator,
            self.unet,
            self.optimizer,
            max_grad_norm=training.max_grad_norm,
            refresh_every=spec.method.forget_norm_refresh_every,
            scheduler=self.scheduler,
        )
        self.samplers = (
            InfiniteSampler(len(data.retain), training.seed),
            InfiniteSampler(len(data.forget), training.seed + 1),
        )
        self.state = self._resume()
        self.train_seconds = 0.0

    def _resume(self) -> checkpoints.TrainingState:
        """The latest checkpoint's state (pulled from the mirror when this machine has none), or a fresh one."""
        folder, mirror = self.checkpointing.folder, self.checkpointing.mirror
        fingerprint = self.checkpointing.fingerprint
        with self.accelerator.local_main_process_first():
            if mirror is not None and not checkpoints.list_checkpoints(folder):
                mirror.pull(folder)
        state = checkpoints.load_latest(folder, self.raw_unet, self.optimizer, self.scheduler)
        state = state or checkpoints.TrainingState()
        if state.step and fingerprint is not None:
            check_resume(state.fingerprint, fingerprint, step=state.step)
        state.fingerprint = fingerprint
        self.stepper.cached_scale = state.cached_forget_scale
        if state.step:
            logger.info("resuming from checkpoint at step %d of %d", state.step, self.spec.training.steps)
        return state

    def step(self, step: int) -> dict[str, float]:
        """Optimizer step `step`: the global RNG reseeded for it, its micro-batches, one update."""
        started = time.perf_counter()
        torch.manual_seed(seed_for(self.spec.training.seed, step, self.accelerator.process_index, GLOBAL_RNG_STREAM))
        micro_batches = _micro_batches(
            self.spec, self.adapter, self.data, self.samplers, self.unet, self.accelerator, step
        )
        stats = self.stepper(step, micro_batches)
        self.train_seconds += time.perf_counter() - started
        self.state.step = step + 1
        return stats

    def log(self, stats: dict[str, float]) -> None:
        step = self.state.step
        if self.main:
            metrics = {f"train/{key}": value for key, value in stats.items()}
            self.reporting.tracker.log_metrics(metrics | {"progress/step": float(step)}, step=step)
        if self.reporting.on_progress is not None:
            self.reporting.on_progress(step, self.spec.training.steps)

    def evaluate(self) -> None:
        """Evaluate the current weights on rank 0 and record them in the history checkpoints carry."""
        evaluator, step = self.reporting.evaluator, self.state.step
        if self.main and evaluator is not None:
            metrics = evaluator(self.raw_unet, step)
            self.state.history.append({"step": step, **metrics})
            self.reporting.tracker.log_metrics({f"eval/{key}": value for key, value in metrics.items()}, step=step)
        self.accelerator.wait_for_everyone()

    def evaluation_due(self) -> bool:
        step = self.state.step
        return step % self.spec.evaluation.every == 0 or step == self.spec.training.steps

    def checkpoint_due(self) -> bool:
        return self.state.step % self.spec.training.checkpoint_every == 0

    def checkpoint(self) -> None:
        self.state.cached_forget_scale = self.stepper.cached_scale
        if self.main:
            keep = self.spec.training.checkpoints_to_keep
            folder = checkpoints.save(
                self.checkpointing.folder, self.raw_unet, self.optimizer, self.scheduler, self.state, keep=keep
            )
            if self.checkpointing.mirror is not None:
                self.checkpointing.mirror.push(folder, keep=keep)
            logger.info("checkpoint saved at step %d", self.state.step)
        self.accelerator.wait_for_everyone()

    def request_met(self) -> bool:
        """training.stopWhen against the evaluations so far (rank 0's verdict, known to every rank)."""
        rule = self.spec.training.stop_when
        return rule is not None and _any_rank(self.accelerator, self.main and rule.met(self.state.history))

    def progress_bar(self, initial: int) -> tqdm:
        return tqdm(
            total=self.spec.training.steps,
            initial=initial,
            desc=f"unlearning ({self.spec.method.name})",
            disable=not (self.main and self.reporting.show_progress),
        )


def train(
    spec: UnlearningJobSpec,
    adapter: DiffusionAdapter,
    data: TrainingData,
    *,
    accelerator: Accelerator,
    checkpointing: Checkpointing,
    reporting: Reporting,
) -> TrainingResult:
    """Fine-tune `adapter.unet` in place with the objective of `spec.method`: resume, then step, log, evaluate
    and checkpoint until `training.steps`, `training.stopWhen` or a SIGTERM."""
    session = _Session(spec, adapter, data, accelerator, checkpointing, reporting)
    resumed_from = session.state.step
    if session.main:
        reporting.tracker.log_metrics({RESUMED_METRIC: float(resumed_from)}, step=resumed_from)
    if resumed_from == 0:
        session.evaluate()
    met = session.request_met()
    last = resumed_from if met else spec.training.steps  # a run that stopped early and is rerun has nothing left
    interrupted = False
    bar = session.progress_bar(resumed_from)
    with _Preemption() as preemption:
        for step in range(resumed_from, last):
            stats = session.step(step)
            session.log(stats)
            bar.update(1)
            bar.set_postfix(loss_keep=stats.get("loss_keep"), loss_forget=stats.get("loss_forget"), refresh=False)
            if session.evaluation_due():
                session.evaluate()
                met = session.request_met()
            stop = _any_rank(accelerator, preemption.requested)
            if session.checkpoint_due() or stop or met:
                session.checkpoint()
            if met:
                logger.info("training.stopWhen met at step %d of %d", session.state.step, spec.training.steps)
                break
            if stop:
                interrupted = True
                break
    bar.close()
    return TrainingResult(
        steps=session.state.step,
        resumed_from=resumed_from,
        history=session.state.history,
        interrupted=interrupted,
        train_seconds=session.train_seconds,
        stopped_early=met and session.state.step < spec.training.steps,
    )


def _any_rank(accelerator: Accelerator, local: bool) -> bool:
    """True on every rank as soon as it is true on one (a SIGTERM, or rank 0's evaluation verdict)."""
    if accelerator.num_processes == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
