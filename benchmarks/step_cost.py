"""Seconds per optimizer step of every objective on the same model and batch, as ratios to naive deletion.

All methods run side by side in one process, interleaved round by round (the machine is shared and noisy),
on the digits-memorized U-Net (1.06 M parameters, 16×16) with batch 64. Writes benchmarks/results/step_cost.md.

    python benchmarks/step_cost.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from unlearning_trainer.data.sampling import generator_for
from unlearning_trainer.objectives import losses
from unlearning_trainer.objectives.methods import FORWARD_PASSES, Objective
from unlearning_trainer.scenarios import builders, digits
from unlearning_trainer.spec import MethodSpec
from unlearning_trainer.training.step import MicroBatch, Stepper

RESULTS = Path(__file__).parent / "results" / "step_cost.md"
VARIANTS = {
    "naive": MethodSpec(name="naive"),
    "neggrad": MethodSpec(name="neggrad"),
    "erasediff": MethodSpec(name="erasediff"),
    "siss-no-is": MethodSpec(name="siss-no-is"),
    "siss": MethodSpec(name="siss"),
    "siss, single backward (K=10)": MethodSpec(name="siss", forget_norm_refresh_every=10),
    "siss, single backward (K=1, exact)": MethodSpec(name="siss", forget_norm_refresh_every=1),
    "retrack (k=10)": MethodSpec(name="retrack", k=10),
}
BACKWARD_PASSES = {"naive": 1, "neggrad": 1, "erasediff": 2, "siss-no-is": 2, "siss": 2, "retrack": 1}


def _time_steps(stepper: Stepper, unet: torch.nn.Module, batch: int, steps: int, offset: int) -> float:
    alphas = builders.ddpm_scheduler().alphas_cumprod
    keep = torch.rand(batch, 1, digits.SIZE, digits.SIZE) * 2 - 1
    forget = torch.ones_like(keep) * 0.5
    k = stepper.objective.neighbour_count
    neighbours = None if k is None else torch.rand(batch, k, 1, digits.SIZE, digits.SIZE) * 2 - 1

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(m, t).sample

    batches = [
        MicroBatch(
            keep,
            forget,
            denoise,
            denoise,
            losses.draw_noise(keep.shape, alphas, generator_for(0, offset + s)),
            neighbours,
        )
        for s in range(steps)
    ]
    started = time.perf_counter()
    for s, micro in enumerate(batches):
        stepper(offset + s, [micro])
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    accelerator = Accelerator(cpu=True)
    torch.set_flush_denormal(True)  # as the trainer does (runner.py)
    setups = {}
    for name, spec in VARIANTS.items():
        unet = digits.unet()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
        stepper = Stepper(
            Objective(spec),
            accelerator,
            unet,
            optimizer,
            max_grad_norm=1.0,
            refresh_every=spec.forget_norm_refresh_every,
        )
        _time_steps(stepper, unet, args.batch, 2, offset=0)
        setups[name] = (stepper, unet)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(args.rounds):
        for name, (stepper, unet) in setups.items():
            samples[name].append(
                _time_steps(stepper, unet, args.batch, args.steps, offset=10 + round_index * args.steps)
            )
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in samples.items()))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    naive, no_is = medians["naive"], medians["siss-no-is"]
    lines = [
        "# Step cost per objective",
        "",
        f"Digits U-Net (1.06 M parameters, 1×16×16), batch {args.batch}, fp32, CPU "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}. Median of {args.rounds} interleaved rounds of {args.steps} steps each; "
        "produced by `python benchmarks/step_cost.py`.",
        "",
        "| objective | forward / backward passes | s / step | × naive | × SISS (No IS) |",
        "|---|---|---|---|---|",
    ]
    for name, seconds in medians.items():
        spec = VARIANTS[name]
        passes = f"{FORWARD_PASSES[spec.name]} / {BACKWARD_PASSES[spec.name]}"
        if spec.forget_norm_refresh_every and spec.forget_norm_refresh_every > 1:
            passes = f"1 / 1 (2 every {spec.forget_norm_refresh_every}th step)"
        lines.append(f"| {name} | {passes} | {seconds:.4f} | {seconds / naive:.2f} | {seconds / no_is:.2f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
