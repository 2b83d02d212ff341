"""The objectives' optimizer step on a U-Net of Stable Diffusion 1.5's shape: what benchmarks/gpu.py (time and
memory on CUDA) and benchmarks/memory.py (memory on a CPU) measure.

The SD 1.5 U-Net architecture (860 M parameters) is built in code with random weights (nothing is downloaded);
64×64 latents, batch 1, 77 random text tokens. TINY is the same architecture at a size CI can run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WARM_UP = 2
VARIANTS: dict[str, dict[str, Any]] = {
    "naive": {"method": {"name": "naive"}},
    "siss (exact, two gradients)": {"method": {"name": "siss"}},
    "siss, single backward (K=10)": {"method": {"name": "siss", "forgetNormRefreshEvery": 10}},
    "siss on LoRA (rank 8, attention)": {"method": {"name": "siss"}, "lora": {"rank": 8}},
}
SD15 = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
TINY = SD15 | {
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


def measure(
    label: str, steps: int, *, full_size: bool, gradient_checkpointing: bool = False, warm_up: int = WARM_UP
) -> dict[str, float]:
    """Time `steps` optimizer steps of one variant after `warm_up` steps; peak memory of this process (CUDA's
    allocator on a GPU, the resident set on a CPU)."""
    import torch
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel

    from unlearning_trainer.models.lora import add_lora
    from unlearning_trainer.objectives import losses
    from unlearning_trainer.objectives.methods import Objective
    from unlearning_trainer.scenarios.builders import ddpm_scheduler
    from unlearning_trainer.spec import AdapterSpec, MethodSpec
    from unlearning_trainer.training.step import MicroBatch, Stepper

    cuda = torch.cuda.is_available()
    shape = SD15 if full_size else TINY
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shape)
    parameters = sum(p.numel() for p in unet.parameters())
    variant = VARIANTS[label]
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if "lora" in variant:
        add_lora(unet, AdapterSpec(**variant["lora"]))
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)
    unet, optimizer = accelerator.prepare(unet.to(device), optimizer)
    objective = Objective(MethodSpec.model_validate(variant["method"]))
    stepper = Stepper(
        objective,
        accelerator,
        unet,
        optimizer,
        max_grad_norm=1.0,
        refresh_every=objective.spec.forget_norm_refresh_every,
    )
    size = shape["sample_size"]
    text = torch.randn(1, 77, shape["cross_attention_dim"], device=device)
    alphas = ddpm_scheduler().alphas_cumprod

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(m, t.to(device), encoder_hidden_states=text).sample

    def batch(step: int) -> MicroBatch:
        g = torch.Generator().manual_seed(step)
        keep, forget = torch.randn(1, 4, size, size, generator=g), torch.randn(1, 4, size, size, generator=g)
        noise = losses.draw_noise(keep.shape, alphas, g).to(device)
        return MicroBatch(keep.to(device), forget.to(device), denoise, denoise, noise)

    for step in range(warm_up):
        stepper(step, [batch(step)])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step in range(warm_up, warm_up + steps):
        stepper(step, [batch(step)])
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_bytes": float(peak), "parameters": float(parameters), "cuda": float(cuda)}


def run_variants(
    script: str, *, rounds: int, steps: int, one_process: bool, options: list[str], **measure_options: Any
) -> dict[str, list[dict[str, float]]]:
    """Measure every variant `rounds` times, alternating, each in a fresh `script --variant` process unless
    `one_process`; `options` are the script's own flags that the child needs again."""
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in VARIANTS}
    for round_index in range(rounds):
        for label in VARIANTS:
            if one_process:
                samples[label].append(measure(label, steps, **measure_options))
                continue
            command = [sys.executable, script, "--variant", label, "--steps", str(steps), *options]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            samples[label].append(json.loads(output.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{rounds} done", flush=True)
    return samples


def write_table(lines: list[str], out: Path | None) -> None:
    """Print a results table and write it to `out` when given."""
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
