"""The audit record: verdict against the spec's thresholds, digests, and the human rendering."""

from __future__ import annotations

import shutil

from unlearning_trainer import audit
from unlearning_trainer.spec import parse_job

BEFORE = {"memorization_rate": 0.02, "forget_nll_bpd": 1.0, "forget_loss": 0.01, "retain_loss": 0.1}


def test_verdict_passes_when_every_check_passes(job_document):
    job = parse_job(job_document)
    after = {"memorization_rate": 0.0, "forget_nll_bpd": 3.0, "forget_loss": 0.5, "retain_loss": 0.105}
    result = audit.verdict(job, BEFORE, after)
    assert result["passed"] and [c["passed"] for c in result["checks"]] == [True, True, True]


def test_verdict_fails_on_remaining_memorization_or_lost_quality(job_document):
    job = parse_job(job_document)
    memorized = {"memorization_rate": 0.01, "forget_nll_bpd": 3.0, "forget_loss": 0.5, "retain_loss": 0.1}
    degraded = {"memorization_rate": 0.0, "forget_nll_bpd": 3.0, "forget_loss": 0.5, "retain_loss": 0.2}
    assert not audit.verdict(job, BEFORE, memorized)["passed"]
    assert not audit.verdict(job, BEFORE, degraded)["passed"]
    job_document["spec"]["audit"] = {"maxRetainLossIncrease": 1.5, "maxMemorizationRate": 0.05}
    assert audit.verdict(parse_job(job_document), BEFORE, degraded)["passed"]


def test_model_digest_covers_weights_and_ignores_reports(scenario, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(scenario / "model", model)
    digest = audit.model_digest(model)
    (model / "metrics.json").write_text("{}")
    assert audit.model_digest(model) == digest
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert audit.model_digest(model) != digest


def test_record_holds_digests_not_data_and_renders(job_document):
    job = parse_job(job_document)
    after = {"memorization_rate": 0.0, "forget_nll_bpd": 3.0, "forget_loss": 0.5, "retain_loss": 0.1}
    record = audit.build_record(
        job,
        forget_files=[("a.png", "ab" * 32), ("b.png", "ab" * 32)],
        model_before="0" * 64,
        model_after="1" * 64,
        metrics={"status": "succeeded", "steps": 4, "before": BEFORE, "after": after},
    )
    assert record["forgotten"] == {
        "count": 2,
        "distinct": 1,
        "sha256": [{"file": "a.png", "sha256": "ab" * 32}, {"file": "b.png", "sha256": "ab" * 32}],
    }
    text = audit.render(record)
    assert "verdict: PASSED" in text and "limits of this evidence" in text and "below 37.50%" in text
    assert "method siss lambda=0.5, forgetGradNorm=5.0\n" in text, "only the fields SISS reads (no k, no eta)"
