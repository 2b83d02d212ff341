"""A rerun never resumes a checkpoint written by a job that trains differently; `--restart` starts over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_scenario, write_job
from unlearning_trainer.spec import parse_job
from unlearning_trainer.training.fingerprint import differences, fingerprint


def unlearn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def workspace(scenario: Path, tmp_path: Path) -> Path:
    return copy_scenario(scenario, tmp_path)


def _audit(workspace: Path) -> dict:
    return json.loads((workspace / "out" / "audit.json").read_text())


def test_a_changed_method_is_refused_and_restart_trains_from_the_base_model(workspace, job_document):
    """The case that used to lie: 2 steps of SISS, then the file says naive, and the rerun 'resumed'."""
    job_document["spec"]["training"] |= {"steps": 2, "checkpointEvery": 1}
    first = unlearn("run", str(write_job(workspace, job_document)), "--no-progress")
    assert first.returncode == 0, first.stderr
    assert _audit(workspace)["method"]["name"] == "siss"

    job_document["spec"]["method"] = {"name": "naive"}
    job_document["spec"]["training"]["steps"] = 4
    refused = unlearn("run", str(write_job(workspace, job_document)), "--no-progress")
    assert refused.returncode == 2, refused.stderr
    assert "checkpoint at step 2 of a job that trains differently: method.name: 'siss' -> 'naive'" in refused.stderr
    assert "Fix: rerun with `unlearn run --restart`" in refused.stderr and "Traceback" not in refused.stderr
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["reason"] == "CheckpointMismatch"
    assert _audit(workspace)["method"]["name"] == "siss", "the published record still describes the weights"

    restarted = unlearn("run", str(write_job(workspace, job_document)), "--no-progress", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert metrics["resumedFrom"] == 0 and metrics["steps"] == 4
    assert [entry["step"] for entry in metrics["history"]] == [0, 2, 4]
    assert _audit(workspace)["method"]["name"] == "naive"


def test_changed_data_or_base_model_are_named(workspace, job_document):
    job_document["spec"]["training"] |= {"steps": 2, "checkpointEvery": 1}
    job = write_job(workspace, job_document)
    assert unlearn("run", str(job), "--no-progress").returncode == 0
    sorted((workspace / "retain").glob("*.png"))[0].unlink()
    result = unlearn("run", str(job), "--no-progress")
    assert result.returncode == 2 and "data: the forget or retained images differ" in result.stderr

    config = workspace / "model" / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "edited",', 1))
    result = unlearn("run", str(job), "--no-progress")
    assert "model: the base model's files differ" in result.stderr


def test_what_may_change_between_attempts(job_document):
    """Bookkeeping, evaluation and workers never matter; the step count only under a schedule that uses it."""

    def of(training: dict, **spec) -> dict:
        document = json.loads(json.dumps(job_document))
        document["spec"] |= {"training": training, **spec}
        return fingerprint(parse_job(document).spec, model_digest="m", data_digest="d")

    constant = of({"steps": 100})
    bookkeeping = {"checkpointEvery": 7, "checkpointsToKeep": 5, "gradientCheckpointing": True}
    assert differences(constant, of({"steps": 300, **bookkeeping})) == []
    assert differences(constant, of({"steps": 100}, workers=2, evaluation={"numSamples": 8})) == []
    cosine = of({"steps": 100, "lrScheduler": "cosine"})
    assert differences(cosine, of({"steps": 300, "lrScheduler": "cosine"})) == ["training.steps: 100 -> 300"]
    assert differences(constant, of({"steps": 100, "learningRate": 1e-4})) == ["training.learningRate: 5e-05 -> 0.0001"]
    assert differences(None, constant) == ["the checkpoint records no fingerprint (an older version wrote it)"]
