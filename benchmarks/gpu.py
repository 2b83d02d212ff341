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
import statistics
from pathlib import Path

import torch
from sd15_step import measure, run_variants, write_table

RESULTS = Path(__file__).parent / "results" / "gpu.md"


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
    full_size = torch.cuda.is_available()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, full_size=full_size)))
        return
    samples = run_variants(
        __file__, rounds=args.rounds, steps=args.steps, one_process=args.one_process, options=[], full_size=full_size
    )
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
    write_table(lines, args.out or (RESULTS if cuda else None))


if __name__ == "__main__":
    main()
