"""`unlearn demo`: make the shipped digits model forget the glyph it memorized, on a CPU, in a few minutes.

It checks the shipped files against their manifest, writes a job file for the scenario, runs it with the same
runner as `unlearn run`, and leaves a report folder: job.yaml, metrics.json, before.png, after.png and the
unlearned pipeline.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unlearning_trainer.errors import DataError
from unlearning_trainer.spec import API_VERSION, KIND, UnlearningJob, parse_job

SCENARIO = Path(__file__).parent / "scenarios" / "digits_memorized"

THRESHOLDS = {"glyph": 4.0, "digit": 1.0}
"""Memorization thresholds (L2 in [0, 1] pixels, 256 entries). Glyph: every real digit is ≥ 9.0 from it and
memorized samples sit below 1. Digit: its nearest other digit is 2.66 away."""

TABLE_ROWS = (
    ("memorization_rate", "memorization rate", "{:.2%}"),
    ("memorized_samples", "memorized samples", "{:.0f}"),
    ("forget_nll_bpd", "forget NLL (bits/dim)", "{:.3f}"),
    ("forget_loss", "forget loss (ε-MSE)", "{:.4f}"),
    ("retain_loss", "retain loss (ε-MSE)", "{:.4f}"),
    ("quality_is", "quality: digit score", "{:.3f}"),
    ("quality_fd", "quality: Fréchet distance", "{:.2f}"),
    ("mia_loss_forget_percentile", "membership: loss pct", "{:.1f}"),
    ("mia_sima_forget_percentile", "membership: SimA pct", "{:.1f}"),
)
METHOD_SETTINGS: dict[str, dict[str, float]] = {
    "siss": {"lambda": 0.5, "forgetGradNorm": 3.0},
    "siss-no-is": {"forgetGradNorm": 3.0},
    "retrack": {"lambda": 0.001, "k": 10},
}
"""The demo's settings per method (benchmarks/results/pareto.md); the others run with the spec's defaults."""


@dataclass(frozen=True)
class DemoSettings:
    case: str = "glyph"
    method: str = "siss"
    steps: int = 150
    evaluate_every: int = 50
    samples: int = 512
    seed: int = 42
    stop_when_forgotten: bool = False
    """Stop at the second evaluation in a row without a memorized sample (training.stopWhen)."""


def verify_manifest(root: Path = SCENARIO) -> int:
    """Check every file listed in MANIFEST.sha256; returns the number of files checked."""
    manifest = root / "MANIFEST.sha256"
    if not manifest.is_file():
        raise DataError(f"{root}: the scenario has no MANIFEST.sha256. Fix: reinstall the package.")
    lines = manifest.read_text().splitlines()
    for line in lines:
        digest, name = line.split("  ", 1)
        path = root / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"{path}: missing or changed (sha256 mismatch). Fix: restore the shipped scenario files.")
    return len(lines)


def demo_job(settings: DemoSettings, output: Path, root: Path = SCENARIO) -> UnlearningJob:
    """The UnlearningJob the demo runs, with absolute paths into the shipped scenario."""
    data = root / "data" / settings.case
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": f"demo-{settings.case}-{settings.method}"},
        "spec": {
            "model": {"uri": str(root / "base")},
            "data": {
                "forget": {"uri": str(data / "forget")},
                "retain": {"uri": str(data / "retain")},
                "holdout": {"uri": str(root / "data" / "holdout")},
            },
            "method": {"name": settings.method, **METHOD_SETTINGS.get(settings.method, {})},
            "training": {
                "steps": settings.steps,
                "batchSize": 64,
                "learningRate": 1e-4,
                "seed": settings.seed,
                "checkpointEvery": settings.evaluate_every,
                **(
                    {"stopWhen": {"maxMemorizationRate": 0.0, "evaluations": 2}} if settings.stop_when_forgotten else {}
                ),
            },
            "evaluation": {
                "every": settings.evaluate_every,
                "numSamples": settings.samples,
                "memorizationThreshold": THRESHOLDS[settings.case],
                "retainImages": 512,
                "classifier": {"uri": str(root / "classifier.safetensors")},
            },
            "output": {"uri": str(output / "model")},
        },
    }
    return parse_job(document, source="demo job")


def format_table(before: dict[str, float], after: dict[str, float], steps: int) -> str:
    """A before/after table of the demo's metrics."""
    header = f"{'metric':<28}{'before':>12}{f'after {steps} steps':>20}"
    lines = [header, "-" * len(header)]
    for key, label, fmt in TABLE_ROWS:
        if key in before and key in after:
            lines.append(f"{label:<28}{fmt.format(before[key]):>12}{fmt.format(after[key]):>20}")
    return "\n".join(lines)


def run_demo(settings: DemoSettings, output: Path, *, show_progress: bool = True) -> dict[str, Any]:
    """Run the demo and write its report folder; returns the run's metrics."""
    from unlearning_trainer.runner import run_job

    verify_manifest()
    shutil.rmtree(output / "model", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    job = demo_job(settings, output)
    (output / "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json", by_alias=True, exclude={"status"})))
    metrics = run_job(job, show_progress=show_progress).metrics
    samples = output / "model" / "samples"
    shutil.copy(samples / "step-000000.png", output / "before.png")
    shutil.copy(samples / f"step-{metrics['steps']:06d}.png", output / "after.png")
    shutil.copy(output / "model" / "metrics.json", output / "metrics.json")
    (output / "table.txt").write_text(format_table(metrics["before"], metrics["after"], metrics["steps"]) + "\n")
    return metrics
