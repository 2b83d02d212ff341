"""Step time and peak memory of the objectives on a U-Net of Stable Diffusion 1.5's shape, side by side.

On CUDA: the SD 1.5 U-Net architecture (860 M parameters) built in code with random weights (nothing is
downloaded), 64×64 latents, batch 1, bf16 autocast through accelerate. On a CPU the same code runs at a tiny
size, so that CI keeps the script working; those numbers say nothing about a GPU.

Every variant runs in its own process (peak memory is per process), and the variants alternate within each
round so that a shared, noisy machine slows them alike. Writes benchmarks/results/gpu.md on CUDA, or the file
given with --out.

    python benchmarks/gpu.py [--rounds 3] [--steps 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "gpu.md"
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


def measure(label: str, steps: int) -> dict[str, float]:
    """Time `steps` optimizer steps of one variant after two warm-up steps; peak memory of this process."""
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
    shape = SD15 if cuda else TINY
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shape)
    parameters = sum(p.numel() for p in unet.parameters())
    variant = VARIANTS[label]
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

    for step in range(2):
        stepper(step, [batch(step)])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step in range(2, 2 + steps):
        stepper(step, [batch(step)])
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_bytes": float(peak), "parameters": float(parameters), "cuda": float(cuda)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default: results/gpu.md on CUDA, stdout only on a CPU")
    parser.add_argument(
        "--one-process", action="store_true", help="measure every variant in this process (peak memory is then shared)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps)))
        return
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in VARIANTS}
    for round_index in range(args.rounds):
        for label in VARIANTS:
            if args.one_process:
                samples[label].append(measure(label, args.steps))
                continue
            command = [sys.executable, __file__, "--variant", label, "--steps", str(args.steps)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            samples[label].append(json.loads(output.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    first = samples["naive"][0]
    cuda = bool(first["cuda"])
    device = "CUDA, bf16" if cuda else f"CPU ({platform.machine()}), fp32, tiny U-Net: a smoke run, not a measurement"
    isolation = "all variants in one process" if args.one_process else "each variant in its own process"
    lines = [
        "# Step time and peak memory on a Stable Diffusion 1.5-shaped U-Net",
        "",
        f"U-Net of {first['parameters'] / 1e6:.1f} M parameters with random weights, "
        f"{'64×64' if cuda else '8×8'} latents, batch 1, {device}. Median of {args.rounds} rounds of "
        f"{args.steps} steps, {isolation}, alternating. Produced by `python benchmarks/gpu.py`.",
        "",
        "| variant | s / step | × naive | peak memory (GiB) | × naive |",
        "|---|---|---|---|---|",
    ]
    naive_time = statistics.median(s["seconds"] for s in samples["naive"])
    naive_peak = statistics.median(s["peak_bytes"] for s in samples["naive"])
    for label, values in samples.items():
        seconds = statistics.median(v["seconds"] for v in values)
        peak = statistics.median(v["peak_bytes"] for v in values)
        lines.append(
            f"| {label} | {seconds:.4f} | {seconds / naive_time:.2f} | {peak / 2**30:.2f} | {peak / naive_peak:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    out = args.out or (RESULTS if cuda else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
