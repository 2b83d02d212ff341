"""Peak memory of one optimizer step on a CPU, on a U-Net of Stable Diffusion 1.5's shape, side by side.

The claim it checks: exact SISS (two gradients, norm fixing) needs at most one parameter-sized buffer more than
naive deletion. Each variant runs in its own process and reports that process's peak resident set, fp32, AdamW,
64×64 latents, batch 1, with diffusers' gradient checkpointing so that activations stay small next to the
parameter-sized tensors being compared (weights, two AdamW moments, gradients). The extra memory over naive
deletion is reported in GiB and in parameter-sized fp32 buffers (P = 4 bytes × the U-Net's parameters).

    python benchmarks/memory.py [--steps 1] [--tiny] [--out PATH]

Writes benchmarks/results/memory.md (full size) or the file given with --out. `--tiny` runs a small U-Net of the
same architecture so that CI keeps the script working; its numbers say nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from sd15_step import measure, run_variants, write_table

RESULTS = Path(__file__).parent / "results" / "memory.md"
GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1, help="measured steps after the warm-up")
    parser.add_argument("--tiny", action="store_true", help="a small U-Net (a smoke run, not a measurement)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/memory.md (full size only)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {"full_size": not args.tiny, "gradient_checkpointing": True, "warm_up": 1}
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, **options)))
        return
    flags = ["--tiny"] if args.tiny else []
    samples = run_variants(__file__, rounds=1, steps=args.steps, one_process=False, options=flags, **options)
    naive = samples["naive"][0]
    buffer = naive["parameters"] * 4
    size = "tiny U-Net: a smoke run, not a measurement" if args.tiny else "64×64 latents"
    lines = [
        "# Peak memory of one optimizer step on a Stable Diffusion 1.5-shaped U-Net (CPU)",
        "",
        f"U-Net of {naive['parameters'] / 1e6:.1f} M parameters with random weights, {size}, batch 1, fp32, AdamW, "
        f"gradient checkpointing, CPU ({platform.machine()}). Peak resident set of a fresh process per variant "
        f"(weights, optimizer state, gradients and activations; one warm-up step, then {args.steps} measured). "
        "P is one parameter-sized fp32 buffer "
        f"({buffer / GIB:.2f} GiB). The single-backward option's measured step holds naive deletion's buffers; its "
        "peak comes from the exact first step, taken before AdamW allocated its state. Every K-th step is exact "
        "too, so in a longer run it reaches exact SISS's peak: the option saves time, not peak memory. "
        "Produced by `python benchmarks/memory.py`.",
        "",
        "| variant | peak (GiB) | × naive | over naive (GiB) | over naive (P) | s / step |",
        "|---|---|---|---|---|---|",
    ]
    for label, (sample,) in samples.items():
        extra = sample["peak_bytes"] - naive["peak_bytes"]
        lines.append(
            f"| {label} | {sample['peak_bytes'] / GIB:.2f} | {sample['peak_bytes'] / naive['peak_bytes']:.2f} "
            f"| {extra / GIB:+.2f} | {extra / buffer:+.2f} | {sample['seconds']:.1f} |"
        )
    write_table(lines, args.out or (None if args.tiny else RESULTS))


if __name__ == "__main__":
    main()
