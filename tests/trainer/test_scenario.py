"""The shipped digits-memorized scenario: manifest, reproducible data, classifier, and the demo's code path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline

from unlearning_trainer import demo
from unlearning_trainer.data.images import load_images
from unlearning_trainer.data.sources import open_source
from unlearning_trainer.evaluation import quality
from unlearning_trainer.scenarios import digits


def test_shipped_files_match_their_manifest():
    assert demo.verify_manifest() > 3000
    listed = {line.split("  ", 1)[1] for line in (demo.SCENARIO / "MANIFEST.sha256").read_text().splitlines()}
    shipped = {p.relative_to(demo.SCENARIO).as_posix() for p in demo.SCENARIO.rglob("*") if p.is_file()}
    assert shipped - {"MANIFEST.sha256"} == listed


def test_manifest_check_catches_a_changed_file(tmp_path):
    copy = tmp_path / "scenario"
    copy.mkdir()
    (copy / "a.txt").write_text("original")
    digits.write_manifest(copy)
    assert demo.verify_manifest(copy) == 1
    (copy / "a.txt").write_text("tampered")
    with pytest.raises(Exception, match="sha256 mismatch"):
        demo.verify_manifest(copy)


@pytest.mark.parametrize("case", digits.CASES)
def test_shipped_data_is_what_the_build_script_makes(case):
    expected = digits.cases()[case]
    for name in ("forget", "retain"):
        shipped = load_images(open_source(demo.SCENARIO / "data" / case / name, field=name), (1, 16, 16))
        assert np.array_equal(shipped.pixels[:, 0].numpy(), expected[name])


def test_the_holdout_is_real_digits_that_no_shipped_model_trained_on():
    shipped = load_images(open_source(demo.SCENARIO / "data" / "holdout", field="holdout"), (1, 16, 16))
    holdout = shipped.pixels[:, 0].numpy()
    assert np.array_equal(holdout, digits.holdout()) and len(holdout) == 180
    _, labels = digits.digits()
    assert np.bincount(labels[digits.split()[1]], minlength=10).min() >= 17, "every digit class is held out"
    for case in digits.CASES:
        trained = {image.tobytes() for name in ("forget", "retain") for image in digits.cases()[case][name]}
        assert not any(image.tobytes() in trained for image in holdout), case


def test_glyph_is_far_from_every_real_digit():
    real, _ = digits.digits()
    distances = np.sqrt((((real / 255.0) - digits.glyph() / 255.0) ** 2).reshape(len(real), -1).sum(1))
    assert distances.min() > 2 * demo.THRESHOLDS["glyph"]


def test_classifier_recognises_real_digits_and_not_the_glyph():
    classifier = quality.DomainClassifier.load(demo.SCENARIO / "classifier.safetensors")
    real, labels = digits.digits()
    images = torch.from_numpy(real).float()[:, None] / 255.0
    accuracy = (classifier.probabilities(images).argmax(1).numpy() == labels).mean()
    assert accuracy > 0.95
    real_quality = quality.quality_metrics(classifier, images[torch.randperm(len(images))[:512]])
    glyphs = torch.from_numpy(np.stack([digits.glyph()] * 64)).float()[:, None] / 255.0
    noise = torch.rand(64, 1, 16, 16)
    assert real_quality["quality_is"] > 5
    assert (
        quality.quality_metrics(classifier, torch.cat([glyphs, noise]))["quality_fd"] > 10 * real_quality["quality_fd"]
    )


def test_demo_code_path_writes_a_complete_report(tmp_path):
    settings = demo.DemoSettings(steps=2, evaluate_every=2, samples=32)
    metrics = demo.run_demo(settings, tmp_path, show_progress=False)
    assert metrics["status"] == "succeeded" and metrics["steps"] == 2
    for name in ("before.png", "after.png", "metrics.json", "job.yaml", "table.txt", "model/audit.json"):
        assert (tmp_path / name).is_file(), name
    for key in ("memorization_rate", "forget_nll_bpd", "retain_loss", "quality_is", "quality_fd", "quality_fd_all"):
        assert key in metrics["before"] and key in metrics["after"]
    table = (tmp_path / "table.txt").read_text()
    assert "memorization rate" in table and "after 2 steps" in table
    assert json.loads((tmp_path / "metrics.json").read_text())["spec"]["method"]["name"] == "siss"
    DDPMPipeline.from_pretrained(tmp_path / "model", use_safetensors=True)


def test_the_demo_can_stop_as_soon_as_the_glyph_is_forgotten(tmp_path):
    plain = demo.demo_job(demo.DemoSettings(), tmp_path).spec.training
    stopping = demo.demo_job(demo.DemoSettings(stop_when_forgotten=True), tmp_path).spec.training
    assert plain.stop_when is None
    assert (stopping.stop_when.max_memorization_rate, stopping.stop_when.evaluations) == (0.0, 2)
