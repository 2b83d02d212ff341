"""LoRA adapters on the U-Net (peft): add one, merge it back into plain layers, and export it for diffusers.

With an adapter only its low-rank matrices train, so the optimizer state, the gradients that norm fixing and
clipping see, and the two gradient buffers of exact SISS are the adapter's size, not the U-Net's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict

from unlearning_trainer.errors import SpecError
from unlearning_trainer.spec import AdapterSpec

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""The file diffusers' save_lora_weights writes and load_lora_weights reads."""


def config(spec: AdapterSpec) -> LoraConfig:
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
        target_modules=list(spec.target_modules),
        init_lora_weights="gaussian",
    )


def add_lora(unet: torch.nn.Module, spec: AdapterSpec, *, seed: int = 0) -> int:
    """Inject LoRA layers into `unet` in place and freeze every other weight; returns the trainable count.

    The adapter's random initialisation draws from `seed` alone, so every rank and every rerun starts alike.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(config(spec), unet)
    except ValueError as exc:
        raise SpecError(
            f"spec.method.adapter.targetModules {list(spec.target_modules)} matched no layer of this U-Net ({exc}). "
            "Fix: name Linear or Conv2d layers it has, e.g. to_q, to_k, to_v, to_out.0 for attention or conv1, "
            "conv2 for residual blocks."
        ) from exc
    return sum(p.numel() for p in unet.parameters() if p.requires_grad)


def has_lora(unet: torch.nn.Module) -> bool:
    return any(isinstance(module, LoraLayer) for module in unet.modules())


def merged(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of `unet` with every LoRA update folded into its base layer, W + (α/r)·B·A, and the wrappers gone.

    The copy has the original module structure, so diffusers saves and loads it as a plain U-Net.
    """
    copied = copy.deepcopy(unet)
    for name, module in list(copied.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent_name), child, module.get_base_layer())
    for parameter in copied.parameters():
        parameter.requires_grad_(True)
    return copied


def save_adapter(unet: torch.nn.Module, folder: Path, spec: AdapterSpec) -> None:
    """Write the adapter alone in diffusers' LoRA format: `pipeline.load_lora_weights(folder)` applies it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=config(spec).to_dict(),
    )
