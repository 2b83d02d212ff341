"""Checkpoint and resume: SIGKILL loses at most `checkpointEvery` steps; SIGTERM checkpoints before exiting."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import IMAGE_SIZE, copy_scenario, write_job
from unlearning_trainer.scenarios import builders

CHECKPOINT_EVERY = 5
STEPS = 60


@pytest.fixture
def long_job(scenario: Path, tmp_path: Path, job_document) -> Path:
    copy_scenario(scenario, tmp_path)
    job_document["spec"]["training"].update({"steps": STEPS, "checkpointEvery": CHECKPOINT_EVERY})
    job_document["spec"]["evaluation"]["every"] = STEPS
    return write_job(tmp_path, job_document)


def _start(job: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "unlearning_trainer.cli", "--verbose", "run", str(job), "--no-progress"]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _run_until_checkpoint(process: subprocess.Popen[str], step: int) -> list[str]:
    lines = []
    for line in process.stderr:
        lines.append(line)
        if f"checkpoint saved at step {step}" in line:
            return lines
    raise AssertionError("the trainer ended before checkpointing:\n" + "".join(lines[-20:]))


def _last_step(lines: list[str]) -> int:
    steps = [int(m.group(1)) for line in lines if (m := re.search(r"step=(\d+) train/", line))]
    return max(steps)


def _resume(job: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((job.parent / "out" / "metrics.json").read_text())


def test_resume_after_sigkill_loses_at_most_checkpoint_every_steps(long_job):
    process = _start(long_job)
    lines = _run_until_checkpoint(process, 2 * CHECKPOINT_EVERY)
    for _ in range(3):
        lines.append(process.stderr.readline())
    process.send_signal(signal.SIGKILL)
    _, remaining = process.communicate(timeout=60)
    lines.extend(remaining.splitlines())
    reached = _last_step(lines)
    metrics = _resume(long_job)
    assert reached - CHECKPOINT_EVERY <= metrics["resumedFrom"] <= reached
    assert metrics["status"] == "succeeded" and metrics["steps"] == STEPS
    assert [entry["step"] for entry in metrics["history"]] == [0, STEPS]


def test_sigterm_checkpoints_the_current_step_and_exits_143(long_job):
    process = _start(long_job)
    lines = _run_until_checkpoint(process, CHECKPOINT_EVERY)
    process.send_signal(signal.SIGTERM)
    _, remaining = process.communicate(timeout=120)
    lines.extend(remaining.splitlines())
    assert process.returncode == 143
    stopped = _last_step(lines)
    checkpoints = sorted((long_job.parent / "out" / "checkpoints").iterdir())
    assert checkpoints[-1].name == f"step-{stopped:06d}"
    assert _resume(long_job)["resumedFrom"] == stopped


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(scenario, tmp_path, job_document):
    """Weights, AdamW moments, the LR schedule and every random draw (noise, batches, dropout) carry over."""
    builders.save_pipeline(
        builders.tiny_unet(sample_size=IMAGE_SIZE, dropout=0.2), builders.ddpm_scheduler(), tmp_path / "model"
    )
    copy_scenario(scenario, tmp_path, parts=("forget", "retain"))
    steps = 24
    job_document["spec"]["training"].update(
        {
            "steps": steps,
            "checkpointEvery": CHECKPOINT_EVERY,
            "learningRate": 1e-3,
            "lrScheduler": "cosine",
            "lrWarmupSteps": 4,
        }
    )
    job_document["spec"]["evaluation"]["every"] = steps
    interrupted = write_job(tmp_path, job_document)
    job_document["spec"]["output"]["uri"] = "straight"
    straight = write_job(tmp_path, job_document, "straight.yaml")

    process = _start(interrupted)
    _run_until_checkpoint(process, CHECKPOINT_EVERY)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
    metrics = _resume(interrupted)
    assert CHECKPOINT_EVERY <= metrics["resumedFrom"] < steps
    subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(straight), "--no-progress"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    weights = "unet/diffusion_pytorch_model.safetensors"
    resumed, uninterrupted = load_file(tmp_path / "out" / weights), load_file(tmp_path / "straight" / weights)
    base = load_file(tmp_path / "model" / weights)
    assert any(not torch.equal(base[key], resumed[key]) for key in base), "the run must have trained"
    different = [key for key in base if not torch.equal(resumed[key], uninterrupted[key])]
    assert not different, f"resumed and uninterrupted runs differ in {different[:5]}"
