"""Load a diffusers pipeline folder into an adapter, refusing pickle checkpoints.

Only safetensors weights are read: a `.bin`, `.pt`, `.ckpt` or `.pkl` file can run arbitrary code when
unpickled, and a model to be unlearned may come from anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearning_trainer.errors import DataError
from unlearning_trainer.models.adapter import DiffusionAdapter

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
PIXEL_PIPELINES = {"DDPMPipeline", "DDIMPipeline"}
LATENT_PIPELINES = {"StableDiffusionPipeline"}


def read_pipeline_class(folder: Path) -> str:
    """The `_class_name` of the pipeline in `folder/model_index.json`."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise DataError(
            f"spec.model.uri: {folder} is not a diffusers pipeline folder (no model_index.json). "
            "Fix: point it at a folder written by `pipeline.save_pretrained(...)`."
        )
    return json.loads(index.read_text())["_class_name"]


def check_no_pickles(folder: Path) -> None:
    """Raise if a component folder holds pickle weights without a safetensors twin."""
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = list(component.iterdir())
        pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        has_safetensors = any(f.suffix == ".safetensors" for f in files)
        if pickles and not has_safetensors:
            raise DataError(
                f"spec.model.uri: {component.name}/ holds only pickle weights ({', '.join(pickles)}), which are "
                "refused because unpickling can run arbitrary code. Fix: convert the checkpoint to safetensors "
                "(load it once in a trusted environment and call save_pretrained(..., safe_serialization=True))."
            )


def load_adapter(folder: Path) -> DiffusionAdapter:
    """Build the adapter for the pipeline in `folder`: pixel-space DDPM/DDIM, or Stable Diffusion (latent,
    text-conditioned; its safety checker is not loaded, since the trainer never shows samples to anyone)."""
    pipeline_class = read_pipeline_class(folder)
    check_no_pickles(folder)
    _quiet_libraries()
    if pipeline_class in PIXEL_PIPELINES:
        from diffusers import DDPMScheduler, UNet2DModel

        from unlearning_trainer.models.pixel import PixelAdapter

        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
        return PixelAdapter(unet, scheduler)
    if pipeline_class in LATENT_PIPELINES:
        stable_diffusion = _import_stable_diffusion()
        from unlearning_trainer.models.latent import LatentAdapter

        pipeline = stable_diffusion.from_pretrained(
            folder, use_safetensors=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        return LatentAdapter(pipeline)
    supported = ", ".join(sorted(PIXEL_PIPELINES | LATENT_PIPELINES))
    raise DataError(f"spec.model.uri: pipeline class {pipeline_class!r} is not supported. Fix: use one of {supported}.")


def _quiet_libraries() -> None:
    """No loading and saving progress bars from diffusers and transformers: the trainer reports its own."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def _import_stable_diffusion() -> type:
    """StableDiffusionPipeline, imported without transformers' warnings about image-processor backends (the
    safety checker's feature extractor, which the trainer never loads); other warnings stay on."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers_logging.set_verbosity(verbosity)
    return StableDiffusionPipeline
