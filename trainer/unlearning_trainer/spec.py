"""The `UnlearningJob` resource as a pydantic model: the single source of truth for the spec.

The CLI, the trainer and the operator parse jobs with it, and the CRD schema is generated from it.
This module must stay importable without torch (the operator image has none).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from unlearning_trainer.errors import SpecError
from unlearning_trainer.job_file import excerpt, read_document
from unlearning_trainer.placement import ResourcesSpec, SchedulingSpec
from unlearning_trainer.wire import WireModel, cel_rule

API_VERSION = "unlearning.dev/v1alpha1"
KIND = "UnlearningJob"

METHODS = ("siss", "siss-no-is", "naive", "neggrad", "erasediff", "retrack")
Method = Literal["siss", "siss-no-is", "naive", "neggrad", "erasediff", "retrack"]
NORM_FIXED_METHODS = ("siss", "siss-no-is")

MAX_BATCH = 1 << 20
MAX_ACCUMULATION = 1024
"""Bounds that keep workers x gradientAccumulationSteps far from the API server's 64-bit CEL integers."""
MAX_NAME_LENGTH = 50
"""Room for the children's suffixes: the Job `<name>-r<attempt>` and its pods' hostnames `<job>-<index>` must
stay DNS-1123 labels (at most 63 characters)."""
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1035 label: the headless Service is named after the job, and Service names must be DNS-1035 labels
(a lower-case letter first, then lower-case letters, digits and '-', no '-' or '.' at the end)."""
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A DNS-1123 subdomain, what Kubernetes requires of a Secret name."""


MAX_URI = 2048


URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\x00-\x1f\x7f]*)?|file://[^\x00-\x1f\x7f]+"
    r"|[/.~][^\x00-\x1f\x7f]*|[^:\x00-\x1f\x7f]+)$"
)
"""s3://bucket[/prefix] with a valid bucket name (3-63 lower-case letters, digits, '.' and '-'), a file:// URI,
or a local path; no other scheme (a typo such as `s3:/bucket` or `gs://` is caught here, not as a retry later),
and no control characters (a path cannot hold a NUL byte)."""
BAD_URI = (
    "is not a URI the trainer can read. Fix: use s3://bucket/prefix (bucket names are 3-63 lower-case letters, "
    "digits, '.' and '-'), a file:// URI or a local path, with no control characters"
)


class Location(WireModel):
    uri: str = Field(
        min_length=1,
        max_length=MAX_URI,
        description="Where the data lives: an s3:// URI, a file:// URI or a local path.",
        json_schema_extra={"pattern": URI_PATTERN},
    )

    @field_validator("uri")
    @classmethod
    def _readable(cls, uri: str) -> str:
        if uri and not re.fullmatch(URI_PATTERN, uri):
            raise ValueError(f"{excerpt(uri)} {BAD_URI}")
        return uri


class ModelSource(Location):
    """A diffusers pipeline folder with safetensors weights."""


DataFormat = Literal["auto", "imagefolder", "webdataset", "parquet"]

ONE_OF_TRAIN_OR_RETAIN = (
    "spec.data needs exactly one of train (the model's training set: the trainer removes the forget images from "
    "it) or retain (a set you made that already leaves them out). Fix: keep one of the two."
)
NEAR_DUPLICATES_NEED_TRAIN = (
    "spec.data.nearDuplicateDistance only applies to data.train (the set the forget images are removed from). "
    "Fix: name the training set as data.train, or drop nearDuplicateDistance."
)


class DataLocation(Location):
    format: DataFormat = Field(
        default="auto",
        description=(
            "imagefolder (image files, captions in metadata.jsonl), webdataset (.tar shards: image and .txt caption "
            "per key) or parquet (Hugging Face datasets files); auto picks parquet if the folder holds .parquet "
            "files, else webdataset if it holds .tar files, else imagefolder."
        ),
    )


MAX_GENERATED = 4096
RETAIN_URI_OR_GENERATE = (
    "spec.data.retain needs exactly one of uri (a retain set you made) or generate (the base model's own "
    "generations for each forget caption). Fix: keep one of the two."
)


class GenerateSpec(WireModel):
    """The paper's keep set for a memorized prompt: the base model's own generations for each forget caption."""

    images_per_caption: int = Field(
        default=64,
        gt=0,
        le=MAX_GENERATED,
        description=(
            "Samples drawn from the base model for each distinct forget caption (unconditional models: in all), "
            "with evaluation.inferenceSteps and evaluation.guidanceScale; the memorization hits among them "
            "(evaluation's criterion) are dropped, the rest become the retain set, each under its caption."
        ),
    )


class RetainLocation(DataLocation):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel_rule("has(self.uri) != has(self.generate)", RETAIN_URI_OR_GENERATE)]
        }
    )

    uri: str | None = Field(  # type: ignore[assignment]
        default=None,
        min_length=1,
        max_length=MAX_URI,
        description="Where the retain set lives: an s3:// URI, a file:// URI or a local path. Give this or generate.",
        json_schema_extra={"pattern": URI_PATTERN},
    )
    generate: GenerateSpec | None = Field(
        default=None,
        description=(
            "Make the retain set from the base model instead: for a memorized prompt, its non-memorized generations "
            "for that same prompt, so that every SISS pair shares its caption (cached in the output store). "
            "Give this or uri."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> RetainLocation:
        if (self.uri is None) == (self.generate is None):
            raise ValueError(RETAIN_URI_OR_GENERATE)
        return self


class DataSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule("has(self.train) != has(self.retain)", ONE_OF_TRAIN_OR_RETAIN),
                cel_rule(
                    "self.nearDuplicateDistance == 0.0 || has(self.train)",
                    NEAR_DUPLICATES_NEED_TRAIN,
                    ".nearDuplicateDistance",
                ),
            ]
        }
    )

    forget: DataLocation = Field(description="The images to forget (with their captions, for text-to-image models).")
    train: DataLocation | None = Field(
        default=None,
        description=(
            "The model's training set; the retain set is this minus every image whose decoded pixels equal a "
            "forget image's (and near-duplicates, see nearDuplicateDistance). Give this or retain."
        ),
    )
    retain: RetainLocation | None = Field(
        default=None,
        description=(
            "The data to keep, already without the forget images, or generated by the base model. Give this or train."
        ),
    )
    holdout: DataLocation | None = Field(
        default=None,
        description=(
            "Images from the training data's distribution that the model never saw: the non-members of the "
            "membership-inference check (evaluation.membership). Without it that check is skipped."
        ),
    )
    near_duplicate_distance: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description=(
            "With train: also exclude images within this root-mean-square distance per pixel (pixels in [0, 1]) of "
            "a forget image, e.g. 0.02 for re-saved JPEGs; 0 excludes exact copies only."
        ),
    )

    @model_validator(mode="after")
    def _one_source_of_retained_data(self) -> DataSpec:
        if (self.train is None) == (self.retain is None):
            raise ValueError(ONE_OF_TRAIN_OR_RETAIN)
        if self.near_duplicate_distance and self.train is None:
            raise ValueError(NEAR_DUPLICATES_NEED_TRAIN)
        return self

    @property
    def kept(self) -> tuple[str, DataLocation]:
        """The spec field and location the retain set comes from (a generated one has no uri)."""
        if self.train is not None:
            return "spec.data.train.uri", self.train
        assert self.retain is not None
        if self.retain.generate is not None:
            return "spec.data.retain.generate", self.retain
        return "spec.data.retain.uri", self.retain


class AdapterSpec(WireModel):
    """Train a LoRA adapter on the U-Net instead of every weight (peft)."""

    type: Literal["lora"] = Field(default="lora", description="The adapter kind; only lora.")
    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r of each low-rank update.")
    alpha: float | None = Field(
        default=None, gt=0.0, description="LoRA scaling numerator: updates are scaled by alpha/rank; null means rank."
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default=["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        max_length=64,
        description=(
            "Names (or name suffixes) of the U-Net's Linear and Conv2d layers that get an adapter, as peft matches "
            "them; the default is the attention projections, as in diffusers' LoRA training examples."
        ),
    )


METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "naive": (),
    "neggrad": ("negGradScale",),
    "erasediff": ("eta",),
    "siss-no-is": ("forgetGradNorm", "forgetNormRefreshEvery"),
    "siss": ("lambda", "forgetGradNorm", "forgetNormRefreshEvery"),
    "retrack": ("k", "lambda"),
}
"""The method fields (wire names) each objective reads, besides `adapter`, which every method honours."""


class MethodSpec(WireModel):
    name: Method = Field(default="siss", description="Unlearning objective.")
    lambda_: float = Field(
        default=0.5,
        alias="lambda",
        ge=0.0,
        le=1.0,
        description=(
            "SISS: defensive-mixture weight, the share of noisy inputs drawn around the forget image. ReTrack: "
            "weight of the forget term, loss = lambda*forget + (1-lambda)*keep."
        ),
    )
    forget_grad_norm: float = Field(
        default=5.0,
        gt=0.0,
        description="SISS: the forget gradient is rescaled to exactly this L2 norm (about 10% of the keep norm).",
    )
    forget_norm_refresh_every: int | None = Field(
        default=None,
        ge=1,
        description=(
            "SISS: if set, take one backward pass on keep - c*forget per step and refresh c (from the forget "
            "gradient norm) every this many steps; null keeps the exact two-gradient step."
        ),
    )
    eta: float = Field(default=1e-3, ge=0.0, description="EraseDiff: the bilevel step's target inner product.")
    neg_grad_scale: float = Field(default=0.01, gt=0.0, description="NegGrad: factor c in the loss -c*L_A.")
    adapter: AdapterSpec | None = Field(
        default=None,
        description=(
            "Train a LoRA adapter instead of every U-Net weight: norm fixing and clipping act on the adapter's "
            "parameters; the output is the merged pipeline (or the adapter alone, output.format: adapter)."
        ),
    )
    k: int = Field(
        default=10,
        ge=1,
        le=1000,
        description=(
            "ReTrack: nearest retain images per forget image (found once before training, in the space the U-Net "
            "denoises) whose noisy trajectories the forget image's are redirected to."
        ),
    )

    def settings(self) -> dict[str, Any]:
        """The fields this method reads (wire names), without the ones it ignores."""
        wire = self.model_dump(by_alias=True, mode="json")
        return {key: wire[key] for key in (*METHOD_SETTINGS[self.name], "adapter") if wire[key] is not None}


LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]


WARMUP_WITHOUT_SCHEDULE = (
    "spec.training.lrWarmupSteps is set but spec.training.lrScheduler is constant, which has no warm-up. "
    "Fix: use constant_with_warmup, linear or cosine, or drop lrWarmupSteps."
)
FP16_NEEDS_A_GPU = (
    "spec.training.mixedPrecision: fp16 needs a CUDA GPU (accelerate applies fp16 autocast and loss scaling only "
    "there; on this machine the job would silently train in float32). Fix: use bf16 or no, or run on a GPU."
)
WARMUP_TOO_LONG = (
    "spec.training.lrWarmupSteps must be less than spec.training.steps. Fix: shorten the warm-up or train longer."
)


STOP_WHEN_EMPTY = (
    "spec.training.stopWhen needs maxMemorizationRate, minForgetNll or both. Fix: add one, or drop stopWhen."
)


class StopWhen(WireModel):
    """End training as soon as the request is met, to spend the least quality on it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule("has(self.maxMemorizationRate) || has(self.minForgetNll)", STOP_WHEN_EMPTY),
            ]
        }
    )

    max_memorization_rate: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Met when the memorization rate is at most this."
    )
    min_forget_nll: float | None = Field(
        default=None, ge=0.0, description="Met when the forget-set NLL (bits/dim) is at least this."
    )
    evaluations: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Consecutive evaluations that must meet it (one zero-hit draw can be luck).",
    )

    @model_validator(mode="after")
    def _something_to_meet(self) -> StopWhen:
        if self.max_memorization_rate is None and self.min_forget_nll is None:
            raise ValueError(STOP_WHEN_EMPTY)
        return self

    def met(self, history: list[dict[str, Any]]) -> bool:
        """Whether the last `evaluations` evaluations after step 0 all meet every given bound."""
        recent = [entry for entry in history if entry["step"] > 0][-self.evaluations :]
        return len(recent) == self.evaluations and all(
            (self.max_memorization_rate is None or entry["memorization_rate"] <= self.max_memorization_rate)
            and (self.min_forget_nll is None or entry["forget_nll_bpd"] >= self.min_forget_nll)
            for entry in recent
        )


class TrainingSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "self.lrWarmupSteps == 0 || self.lrScheduler != 'constant'",
                    WARMUP_WITHOUT_SCHEDULE,
                    ".lrWarmupSteps",
                ),
                cel_rule("self.lrWarmupSteps < self.steps", WARMUP_TOO_LONG, ".lrWarmupSteps"),
            ]
        }
    )

    steps: int = Field(default=300, gt=0, description="Optimizer steps.")
    batch_size: int = Field(
        default=64, gt=0, le=MAX_BATCH, description="Global batch size per optimizer step, split across workers."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=MAX_ACCUMULATION, description="Micro-batches per optimizer step."
    )
    learning_rate: float = Field(default=5e-5, gt=0.0, description="AdamW (peak) learning rate.")
    lr_scheduler: LrScheduler = Field(
        default="constant", description="Learning-rate schedule over `steps` (diffusers' get_scheduler)."
    )
    lr_warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps at the start of the schedule.")
    adam_beta1: float = Field(default=0.95, ge=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=1e-6, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="Global clip applied to the combined gradient.")
    seed: int = Field(default=42, ge=0)
    checkpoint_every: int = Field(default=100, gt=0, description="Save a resumable checkpoint every N steps.")
    checkpoints_to_keep: int = Field(default=2, ge=1, description="Older checkpoints are deleted.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        default="no",
        description=(
            "Run the U-Net's forward and backward passes in bfloat16 or float16 (accelerate's autocast; the "
            "weights, the optimizer and the loss arithmetic stay float32). fp16 needs a CUDA GPU and uses a dynamic "
            "loss scale: both SISS gradients are combined in scaled space and unscaled once, which is exact; a "
            "step whose gradients overflow is skipped. Prefer bf16 where the GPU has it (Ampere and later)."
        ),
    )
    stop_when: StopWhen | None = Field(
        default=None,
        description=(
            "Stop before `steps` once the request is met at consecutive evaluations (every evaluation.every "
            "steps); the audit record says at which step."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description=(
            "Recompute the U-Net's activations in the backward pass instead of storing them (diffusers' switch): "
            "less memory, about a third more compute, the same gradients."
        ),
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSpec:
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError(WARMUP_WITHOUT_SCHEDULE)
        if self.lr_warmup_steps >= self.steps:
            raise ValueError(
                f"spec.training.lrWarmupSteps ({self.lr_warmup_steps}) must be less than spec.training.steps "
                f"({self.steps}). Fix: shorten the warm-up or train longer."
            )
        return self


class NllSpec(WireModel):
    method: Literal["vlb", "pf-ode"] = Field(
        default="vlb",
        description="vlb: discrete variational bound over the schedule; pf-ode: probability-flow ODE likelihood.",
    )
    timesteps: int = Field(
        default=1000,
        gt=0,
        description="vlb: number of evenly spaced terms of the bound (the rest are scaled).",
    )
    hutchinson_samples: int = Field(default=1, gt=0, description="pf-ode: Rademacher draws averaged per image.")
    tolerance: float = Field(default=1e-5, gt=0.0, description="pf-ode: RK45 rtol and atol.")


class MembershipSpec(WireModel):
    """Membership-inference evidence against data.holdout (evaluation/membership.py)."""

    loss_timesteps: list[Annotated[int, Field(ge=0)]] = Field(
        default=[25, 50, 100],
        min_length=1,
        max_length=32,
        description=(
            "Loss attack: an image's score is its mean noise-prediction error at these timesteps (fixed noise); "
            "each must be below the scheduler's number of training timesteps."
        ),
    )
    sima_timestep: int = Field(
        default=25,
        ge=0,
        description="SimA: an image's score is the norm of the noise predicted from the clean image at this t.",
    )


class EvaluationSpec(WireModel):
    every: int = Field(default=100, gt=0, description="Evaluate every N steps (and before and after training).")
    num_samples: int = Field(default=256, gt=0, description="Generated samples for memorization and grids.")
    memorization_threshold: float = Field(
        default=10.0,
        gt=0.0,
        description="A sample is a hit when its L2 distance to a forget image, in [0, 1] pixels, is below this.",
    )
    memorization_threshold_rms: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description=(
            "The same criterion per pixel value, independent of resolution: a hit is a sample whose root-mean-square "
            "distance to a forget image (values in [0, 1]) is below this. When set it replaces "
            "memorizationThreshold (the L2 threshold becomes this times the square root of the number of values)."
        ),
    )
    inference_steps: int = Field(default=50, gt=0, description="DDIM steps when sampling.")
    guidance_scale: float = Field(
        default=7.5,
        ge=1.0,
        description="Classifier-free guidance when sampling text-conditioned models for the forget caption.",
    )
    timestep_grid: int = Field(default=10, gt=0, description="Timesteps in the fixed grid of the denoising losses.")
    retain_images: int = Field(default=256, gt=0, description="Retain images used for the retain-set loss.")
    seed: int = Field(default=0, ge=0, description="Seed of every random draw in the evaluation.")
    nll: NllSpec = Field(default_factory=NllSpec)
    membership: MembershipSpec = Field(
        default_factory=MembershipSpec,
        description=(
            "Loss and SimA membership attacks, members (the retainImages subset) against data.holdout; run at every "
            "evaluation when data.holdout is set."
        ),
    )
    classifier: Location | None = Field(
        default=None,
        description=(
            "Optional domain classifier (safetensors MLP, see evaluation/quality.py) for an Inception-style "
            "score and a Fréchet distance of the samples that are not memorization hits (and of all samples)."
        ),
    )

    def l2_threshold(self, values: int) -> float:
        """The L2 threshold for images of `values` pixel values: memorizationThreshold, or rms × √values."""
        if self.memorization_threshold_rms is not None:
            return self.memorization_threshold_rms * values**0.5
        return self.memorization_threshold


class OutputSpec(Location):
    """Where the unlearned pipeline, metrics.json and checkpoints are written."""

    format: Literal["pipeline", "adapter"] = Field(
        default="pipeline",
        description=(
            "pipeline: the whole unlearned pipeline (a LoRA adapter merged into the U-Net); adapter: with "
            "method.adapter, only the LoRA weights, for diffusers' load_lora_weights on the base pipeline "
            "(text-to-image pipelines only)."
        ),
    )


class StorageSpec(WireModel):
    endpoint: str | None = Field(
        default=None, max_length=MAX_URI, description="S3-compatible endpoint URL; null means AWS."
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="Name of the Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Kubernetes only).",
    )


class RegisteredModelSpec(WireModel):
    name: str = Field(min_length=1, max_length=256, description="MLflow registered model name.")
    alias: str | None = Field(default=None, max_length=256, description="Alias set on the new version.")


class TrackingSpec(WireModel):
    mlflow_tracking_uri: str | None = Field(
        default=None,
        max_length=MAX_URI,
        description="MLflow server; null uses MLFLOW_TRACKING_URI (on Kubernetes: the operator's default).",
    )
    experiment: str = Field(default="unlearning", min_length=1, max_length=256, description="MLflow experiment name.")
    registered_model: RegisteredModelSpec | None = Field(
        default=None, description="Register the unlearned pipeline as a new version of this MLflow model."
    )


class AuditSpec(WireModel):
    request_id: str | None = Field(
        default=None, max_length=256, description="The deletion request this job answers (ticket or case id)."
    )
    max_memorization_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Verdict: the final memorization rate must not exceed this."
    )
    max_retain_loss_increase: float = Field(
        default=0.1, ge=0.0, description="Verdict: the retain loss may grow by at most this fraction."
    )
    relearning_steps: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description=(
            "Relearning probe: after training, fine-tune a copy of the unlearned U-Net this many steps on retain "
            "data only and measure memorization and forget NLL again (does plain fine-tuning bring the data "
            "back?); reported beside the verdict. 0 skips it."
        ),
    )
    min_membership_percentile: float = Field(
        default=5.0,
        ge=0.0,
        le=100.0,
        description=(
            "Verdict, when data.holdout is set: under both membership attacks every forget image must score at "
            "least at this percentile of the non-members (0 means it looks more like a training image than every "
            "one of them)."
        ),
    )


class RunPolicySpec(WireModel):
    backoff_limit: int = Field(
        default=3,
        ge=0,
        description="Whole-group restarts after failures before the job fails (interruptions by SIGTERM, "
        "which checkpoint first, do not count).",
    )
    active_deadline_seconds: int | None = Field(default=None, gt=0)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    suspend: bool = False


OUTPUT_IS_MODEL = (
    "spec.output.uri equals spec.model.uri: the base model would be overwritten. "
    "Fix: write the unlearned model to a new location."
)
ADAPTER_OUTPUT_NEEDS_ADAPTER = (
    "spec.output.format is adapter but spec.method.adapter is not set: there is no adapter to write. Fix: add "
    "method.adapter (type lora) or use output.format: pipeline."
)
BATCH_NOT_DIVISIBLE = (
    "spec.training.batchSize must be divisible by workers x gradientAccumulationSteps. "
    "Fix: choose a batch size that is a multiple of that product."
)


def _without_slash(uri: str) -> str:
    """CEL: the URI without one trailing '/', as _normalize_uri compares them."""
    return f"({uri}.endsWith('/') ? {uri}.substring(0, {uri}.size() - 1) : {uri})"


class UnlearningJobSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    f"{_without_slash('self.output.uri')} != {_without_slash('self.model.uri')}",
                    OUTPUT_IS_MODEL,
                    ".output.uri",
                ),
                cel_rule(
                    "!has(self.training) || "
                    "self.training.batchSize % (self.workers * self.training.gradientAccumulationSteps) == 0",
                    BATCH_NOT_DIVISIBLE,
                    ".training.batchSize",
                ),
                cel_rule(
                    "!has(self.output.format) || self.output.format != 'adapter' || "
                    "(has(self.method) && has(self.method.adapter))",
                    ADAPTER_OUTPUT_NEEDS_ADAPTER,
                    ".output.format",
                ),
            ]
        }
    )

    model: ModelSource
    data: DataSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    workers: int = Field(default=1, ge=1, le=64, description="Trainer processes (pods on Kubernetes).")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Kubernetes only: CPU, memory and GPUs of each trainer pod."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Kubernetes only: which nodes the trainer pods may run on."
    )
    run_policy: RunPolicySpec = Field(
        default_factory=RunPolicySpec,
        # Always present once the API server has defaulted it, so the immutability rule sees every field of it.
        json_schema_extra={"default": {}},
    )

    @model_validator(mode="after")
    def _output_is_not_the_input(self) -> UnlearningJobSpec:
        if _normalize_uri(self.output.uri) == _normalize_uri(self.model.uri):
            raise ValueError(OUTPUT_IS_MODEL)
        return self

    @model_validator(mode="after")
    def _adapter_output_has_an_adapter(self) -> UnlearningJobSpec:
        if self.output.format == "adapter" and self.method.adapter is None:
            raise ValueError(ADAPTER_OUTPUT_NEEDS_ADAPTER)
        return self

    @model_validator(mode="after")
    def _batch_splits_into_micro_batches(self) -> UnlearningJobSpec:
        parts = self.workers * self.training.gradient_accumulation_steps
        if self.training.batch_size % parts:
            raise ValueError(
                f"spec.training.batchSize ({self.training.batch_size}) must be divisible by workers x "
                f"gradientAccumulationSteps ({parts}). Fix: choose a batch size that is a multiple of {parts}."
            )
        return self


class ObjectMeta(WireModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits and '-', starting with a letter (the Service and pods take it).",
    )
    namespace: str | None = None


class UnlearningJob(WireModel):
    api_version: Literal["unlearning.dev/v1alpha1"]
    kind: Literal["UnlearningJob"]
    metadata: ObjectMeta
    spec: UnlearningJobSpec
    status: dict[str, Any] | None = None

    @field_validator("status")
    @classmethod
    def _ignore_status(cls, value: dict[str, Any] | None) -> None:
        return None


def _normalize_uri(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri.rstrip("/")


_FIXES = {
    "finite_number": "use a finite number (JSON, which the API server speaks, has no NaN or infinity)",
    "missing": "add this field",
    "extra_forbidden": "remove it or check its spelling (field names are camelCase)",
    "literal_error": "use one of the allowed values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "int_type": "use a whole number, unquoted",
    "float_type": "use a number, unquoted",
    "bool_type": "use true or false, unquoted",
    "string_type": "use a string",
    "model_type": "use a mapping of fields",
    "int_parsing": "use a whole number",
    "int_from_float": "use a whole number",
    "float_parsing": "use a number",
    "string_too_short": "give a non-empty value",
    "string_too_long": "use a shorter value",
    "string_pattern_mismatch": "use lower-case letters, digits and '-' (and '.' in a Secret name)",
}


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if path:
        message = f"{path}: {message}"
    fix = _FIXES.get(error["type"])
    if fix:
        message += f" (got {excerpt(error['input'])}). Fix: {fix}." if error["type"] != "missing" else f". Fix: {fix}."
    return message


def parse_job(document: Any, *, source: str = "job") -> UnlearningJob:
    """Validate a parsed YAML/JSON document as an UnlearningJob.

    Raises:
        SpecError: with one line per problem, each naming the field and the fix.
    """
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a YAML mapping with apiVersion, kind, metadata and spec")
    try:
        return UnlearningJob.model_validate(document)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors(include_url=False)]
        raise SpecError(f"{source} is not a valid UnlearningJob:\n  - " + "\n  - ".join(problems)) from None


def parse_spec(spec: Any, *, source: str = "spec") -> UnlearningJobSpec:
    """Validate only the `spec` part (the operator receives spec and metadata separately)."""
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "job"}, "spec": spec}
    return parse_job(document, source=source).spec


def load_job(path: str | Path) -> UnlearningJob:
    """Read and validate a job file."""
    return parse_job(read_document(Path(path)), source=str(path))


def dump_job(job: UnlearningJob) -> dict[str, Any]:
    """The job as a camelCase document with every default filled in (the resolved spec)."""
    return job.model_dump(mode="json", by_alias=True, exclude={"status"})
