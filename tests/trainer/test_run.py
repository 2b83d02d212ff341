"""`unlearn run` end to end on a tiny scenario, and the clear errors for unusable models and data."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import copy_scenario, write_job
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import parse_job


def unlearn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def workspace(scenario: Path, tmp_path: Path) -> Path:
    return copy_scenario(scenario, tmp_path)


def test_run_writes_a_pipeline_that_diffusers_loads_and_a_metrics_file(workspace, job_document):
    job = write_job(workspace, job_document)
    result = unlearn("run", str(job), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "succeeded: 4 steps" in result.stdout and "memorization_rate" in result.stdout
    out = workspace / "out"
    pipeline = DDPMPipeline.from_pretrained(out, use_safetensors=True)
    base = load_file(workspace / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    changed = {k for k, v in pipeline.unet.state_dict().items() if not torch.equal(v, base[k])}
    assert changed, "the unlearned U-Net must differ from the base model"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "succeeded" and metrics["steps"] == 4
    assert [entry["step"] for entry in metrics["history"]] == [0, 2, 4]
    for key in ("memorization_rate", "forget_loss", "retain_loss", "forget_nll_bpd", "min_forget_distance"):
        assert np.isfinite(metrics["before"][key]) and np.isfinite(metrics["after"][key])
    after = metrics["after"]
    assert after["min_forget_rms"] == pytest.approx(after["min_forget_distance"] / 8.0)  # 8×8×1 pixel values
    data = metrics["data"]
    assert (data["retainFrom"], data["forget"], data["forgetUnique"], data["scanned"], data["retain"]) == (
        "retain",
        3,
        1,
        48,
        48,
    )
    assert data["excluded"] == 0 and data["exactCopies"] == 0 and data["nearestKeptDistance"] > 2.0
    assert metrics["spec"]["method"]["name"] == "siss"
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"step-00000{i}.png" for i in (0, 2, 4)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert not list(out.rglob("*.bin")) and not list(out.glob(".staging*"))


def test_evaluation_is_deterministic_for_a_seed(workspace, job_document):
    job_document["spec"]["training"]["steps"] = 2
    first = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    shutil.rmtree(workspace / "out")
    second = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    for a, b in zip(first["history"], second["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "eval_seconds"} == {
            k: v for k, v in b.items() if k != "eval_seconds"
        }


def test_a_rerun_resumes_from_the_latest_checkpoint(workspace, job_document):
    job = resolve_local_uris(parse_job(job_document), workspace)
    run_job(job, show_progress=False)
    job_document["spec"]["training"]["steps"] = 6
    longer = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    assert longer["resumedFrom"] == 4 and longer["steps"] == 6
    assert [entry["step"] for entry in longer["history"]] == [0, 2, 4, 6]


@pytest.mark.parametrize("command", [[], ["validate"], ["run"]], ids=["unlearn", "validate", "run"])
def test_help_on_every_command(command):
    result = unlearn(*command, "--help")
    assert result.returncode == 0 and "usage: unlearn" in result.stdout


def test_invalid_spec_exits_2_with_the_field(workspace, job_document):
    job_document["spec"]["method"]["name"] = "forget-it"
    result = unlearn("run", str(write_job(workspace, job_document)))
    assert result.returncode == 2
    assert "spec.method.name" in result.stderr and "Traceback" not in result.stderr


def test_a_training_set_with_the_forget_images_gives_the_run_a_hand_made_retain_set_gives(workspace, job_document):
    """data.train = retain ∪ forget (re-encoded): the copies are excluded and training is identical, bit for bit."""
    train = shutil.copytree(workspace / "retain", workspace / "train")
    for index, path in enumerate(sorted((workspace / "forget").glob("*.png"))):
        with Image.open(path) as image:
            image.save(train / f"0-request-{index}.png", optimize=True, compress_level=9)
    by_retain = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    by_train = copy.deepcopy(job_document)
    by_train["spec"]["data"] = {"forget": {"uri": "forget"}, "train": {"uri": "train"}}
    by_train["spec"]["output"]["uri"] = "out-train"
    result = run_job(resolve_local_uris(parse_job(by_train), workspace), show_progress=False)
    data = result.metrics["data"]
    assert (data["retainFrom"], data["scanned"], data["exactCopies"], data["excluded"], data["retain"]) == (
        "train",
        51,
        3,
        3,
        48,
    )
    assert data["forgetFound"] == 1 and data["warnings"] == []
    timeless = [{k: v for k, v in entry.items() if k != "eval_seconds"} for entry in by_retain["history"]]
    assert [{k: v for k, v in entry.items() if k != "eval_seconds"} for entry in result.metrics["history"]] == timeless
    trained = load_file(workspace / "out-train" / "unet" / "diffusion_pytorch_model.safetensors")
    reference = load_file(workspace / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(trained[key], reference[key]) for key in reference)
    record = json.loads((workspace / "out-train" / "audit.json").read_text())["data"]
    assert record["sha256"] == data["sha256"] == by_retain["data"]["sha256"], "the same retained images, in order"
    assert (record["retainFrom"], record["scanned"], record["retained"], record["excludedExactCopies"]) == (
        "train",
        51,
        48,
        3,
    )
    report = unlearn("report", str(workspace / "out-train"))
    assert "retained 48 of 51 training images: 3 excluded (3 copies, 0 near-duplicates)" in report.stdout


def test_the_pass_over_the_data_warns_about_what_needs_a_look(workspace, job_document, caplog):
    """Forget copies left in a retain set, and a memorization threshold above the nearest retained image."""
    shutil.copy(sorted((workspace / "forget").glob("*.png"))[0], workspace / "retain" / "stray-copy.png")
    job_document["spec"]["evaluation"]["memorizationThreshold"] = 50.0
    job_document["spec"]["training"]["steps"] = 2
    metrics = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    warnings = metrics["data"]["warnings"]
    assert len(warnings) == 2
    assert "spec.data.retain.uri holds 1 copies of forget images" in warnings[0] and "spec.data.train" in warnings[0]
    nearest = metrics["data"]["nearestKeptDistance"]
    expected = "memorizationThreshold (50) is not below the distance from the nearest kept image to a forget image"
    assert f"{expected} ({nearest:.3g})" in warnings[1]
    assert all(warning in caplog.text for warning in warnings)


def test_a_training_set_missing_the_forget_images_is_flagged(workspace, job_document):
    job_document["spec"]["data"] = {"forget": {"uri": "forget"}, "train": {"uri": "retain"}}
    job_document["spec"]["training"]["steps"] = 2
    metrics = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    assert metrics["data"]["forgetFound"] == 0 and metrics["data"]["excluded"] == 0
    assert "1 of the 1 distinct forget images have no copy in spec.data.train.uri" in metrics["data"]["warnings"][0]


def test_a_training_set_of_nothing_but_forget_images(workspace, job_document):
    job_document["spec"]["data"] = {"forget": {"uri": "forget"}, "train": {"uri": "forget"}}
    _expect_data_error(workspace, job_document, "spec.data.train.uri", "nothing is left to keep", "Fix:")


def _expect_data_error(workspace: Path, job_document, *fragments: str) -> None:
    result = unlearn("run", str(write_job(workspace, job_document)), "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["reason"] == "DataError"
    assert not (workspace / "out" / "model_index.json").exists(), "nothing is published"
    assert not (workspace / "out" / "checkpoints").exists(), "the error comes before any training"


def test_empty_forget_set(workspace, job_document):
    (workspace / "empty").mkdir()
    job_document["spec"]["data"]["forget"]["uri"] = "empty"
    _expect_data_error(workspace, job_document, "spec.data.forget.uri", "holds no images", "Fix:")


def test_missing_data_folder(workspace, job_document):
    job_document["spec"]["data"]["retain"]["uri"] = "nowhere"
    _expect_data_error(workspace, job_document, "spec.data.retain.uri", "does not exist")


def test_image_size_that_does_not_match_the_model(workspace, job_document):
    builders.write_image_folder(np.zeros((2, 16, 16), np.uint8), workspace / "big")
    job_document["spec"]["data"]["forget"]["uri"] = "big"
    _expect_data_error(workspace, job_document, "spec.data.forget.uri", "16×16 but the model expects 8×8", "Fix:")


def test_a_corrupt_image(workspace, job_document):
    sorted((workspace / "forget").glob("*.png"))[0].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _expect_data_error(workspace, job_document, "spec.data.forget.uri", "is not a readable image", "Fix:")


def test_colour_images_for_a_grayscale_model(workspace, job_document):
    colour = np.zeros((2, 8, 8, 3), np.uint8)
    colour[..., 0] = 255
    builders.write_image_folder(colour, workspace / "colour")
    job_document["spec"]["data"]["retain"]["uri"] = "colour"
    _expect_data_error(workspace, job_document, "spec.data.retain.uri", "colour image", "1 channel")


def test_an_empty_retain_set(workspace, job_document):
    (workspace / "empty").mkdir()
    job_document["spec"]["data"]["retain"]["uri"] = "empty"
    _expect_data_error(workspace, job_document, "spec.data.retain.uri", "holds no images")


def test_an_unsupported_pipeline(workspace, job_document):
    index = workspace / "model" / "model_index.json"
    index.write_text(index.read_text().replace("DDPMPipeline", "KandinskyPipeline"))
    _expect_data_error(workspace, job_document, "spec.model.uri", "'KandinskyPipeline' is not supported")


def test_pickle_checkpoints_are_refused(workspace, job_document):
    weights = workspace / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    _expect_data_error(workspace, job_document, "spec.model.uri", "pickle", "safetensors")


def test_a_folder_that_is_not_a_pipeline(workspace, job_document):
    job_document["spec"]["model"]["uri"] = "retain"
    _expect_data_error(workspace, job_document, "spec.model.uri", "model_index.json")


def test_termination_message_for_the_operator(workspace, job_document, tmp_path):
    message = tmp_path / "termination-log"
    job = write_job(workspace, job_document)
    env = {**os.environ, "UNLEARNING_TERMINATION_LOG": str(message)}
    subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(job), "--no-progress"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    summary = json.loads(message.read_text())
    assert isinstance(summary.pop("auditPassed"), bool)
    assert summary == {"reason": "Succeeded", "message": "succeeded after 4 steps", "step": 4, "resumedFrom": 0}
    job_document["spec"]["data"]["forget"]["uri"] = "nowhere"
    job = write_job(workspace, job_document, "bad.yaml")
    failed = subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(job)], env=env, capture_output=True, timeout=300
    )
    assert failed.returncode == 3
    summary = json.loads(message.read_text())
    assert summary["reason"] == "DataError" and "spec.data.forget.uri" in summary["message"]


def test_a_nan_update_stops_the_job_with_the_last_checkpoint_kept_and_nothing_published(
    workspace, job_document, tmp_path
):
    """A learning rate of 1e30 makes the second step's update inf or NaN: the trainer stops with exit code 5
    (which the operator never retries), before applying it, keeping the step-1 checkpoint."""
    job_document["spec"]["training"] |= {"steps": 4, "learningRate": 1e30, "checkpointEvery": 1}
    message = tmp_path / "termination-log"
    job = write_job(workspace, job_document)
    env = {**os.environ, "UNLEARNING_TERMINATION_LOG": str(message)}
    result = subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(job), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 5, result.stderr[-3000:]
    summary = json.loads(message.read_text())
    assert summary["reason"] == "NonFinite" and "NaN or inf" in summary["message"]
    out = workspace / "out"
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints and all(p.startswith("step-") for p in checkpoints)
    assert not (out / "model_index.json").exists(), "a model that went NaN is never published"


def test_the_rms_threshold_replaces_the_l2_one(workspace, job_document):
    """RMS 1 per value is the largest possible distance: every sample then counts as a hit."""
    job_document["spec"]["training"]["steps"] = 2
    job_document["spec"]["evaluation"]["memorizationThresholdRms"] = 1.0
    metrics = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    assert metrics["before"]["memorization_rate"] == 1.0
    assert "memorizationThreshold (8)" in metrics["data"]["warnings"][0]


def test_gradient_checkpointing_trains_the_same_weights(workspace, job_document):
    job_document["spec"]["training"]["steps"] = 2
    run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
    job_document["spec"]["training"]["gradientCheckpointing"] = True
    job_document["spec"]["output"]["uri"] = "out-checkpointed"
    run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
    plain = load_file(workspace / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    checkpointed = load_file(workspace / "out-checkpointed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(plain[key], checkpointed[key], rtol=1e-4, atol=1e-6) for key in plain)


def test_a_bf16_run_lands_close_to_the_fp32_run(workspace, job_document):
    """bfloat16 keeps 8 bits of mantissa (relative rounding 2⁻⁸ ≈ 0.4%) in the U-Net's passes while weights, AdamW
    and the loss arithmetic stay float32. Over 4 steps the update (weights after − before) must point the same way
    as fp32's (cosine > 0.95) and have the same size within 10%; rounding noise of that order is all bf16 adds."""
    base = load_file(workspace / "model" / "unet" / "diffusion_pytorch_model.safetensors")

    def update(precision: str) -> torch.Tensor:
        job_document["spec"]["training"]["mixedPrecision"] = precision
        job_document["spec"]["output"]["uri"] = f"out-{precision}"
        result = unlearn("run", str(write_job(workspace, job_document, f"{precision}.yaml")), "--no-progress")
        assert result.returncode == 0, result.stderr  # a process each: accelerate's precision is per process
        weights = load_file(workspace / f"out-{precision}" / "unet" / "diffusion_pytorch_model.safetensors")
        assert all(value.dtype == torch.float32 for value in weights.values()), "weights are saved in float32"
        return torch.cat([(weights[key] - base[key]).flatten() for key in sorted(base)])

    full, half = update("no"), update("bf16")
    assert not torch.equal(full, half), "bf16 must actually change the arithmetic"
    assert torch.nn.functional.cosine_similarity(full, half, dim=0) > 0.95
    assert abs(half.norm() / full.norm() - 1) < 0.1


def test_training_stops_once_the_request_is_met_and_a_rerun_has_nothing_left(workspace, job_document):
    job_document["spec"]["training"] |= {"steps": 8, "stopWhen": {"maxMemorizationRate": 1.0, "evaluations": 2}}
    job = write_job(workspace, job_document)
    first = unlearn("run", str(job), "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "training.stopWhen met at step 4 of 8" in first.stderr
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["stoppedEarly"]) == (4, True)
    assert [entry["step"] for entry in metrics["history"]] == [0, 2, 4]
    assert sorted(p.name for p in (workspace / "out" / "checkpoints").iterdir())[-1] == "step-000004"
    assert "after 4 steps (training.stopWhen met)" in unlearn("report", str(workspace / "out")).stdout

    again = unlearn("run", str(job), "--no-progress")
    assert again.returncode == 0, again.stderr
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["resumedFrom"], metrics["stoppedEarly"]) == (4, 4, True)


def test_the_relearning_probe_fine_tunes_a_copy_and_reports_beside_the_verdict(workspace, job_document):
    job_document["spec"]["training"]["steps"] = 2
    run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
    job_document["spec"]["audit"] = {"relearningSteps": 3}
    job_document["spec"]["output"]["uri"] = "out-probed"
    metrics = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False).metrics
    probe = metrics["relearning"]
    assert probe["steps"] == 3 and 0 <= probe["memorization_rate"] <= 1 and np.isfinite(probe["forget_nll_bpd"])
    assert probe["forget_loss"] != metrics["after"]["forget_loss"], "the probe evaluates the fine-tuned copy"
    assert (workspace / "out-probed" / "samples" / "relearning-probe.png").is_file()
    published = load_file(workspace / "out-probed" / "unet" / "diffusion_pytorch_model.safetensors")
    unprobed = load_file(workspace / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(published[key], unprobed[key]) for key in unprobed), "the published model is untouched"
    record = json.loads((workspace / "out-probed" / "audit.json").read_text())
    assert record["relearning"] == probe and record["verdict"] is not None
    assert (
        "relearning probe: after 3 steps of fine-tuning on retain data only"
        in unlearn("report", str(workspace / "out-probed")).stdout
    )
