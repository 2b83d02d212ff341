"""Membership inference: the AUC and percentile arithmetic, both attacks on a model that memorized its training
set, and the check end to end (metrics, audit verdict, report, and the clear errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import copy_scenario, forget_glyph, grayscale_set, retain_images
from unlearning_trainer import audit
from unlearning_trainer.data.sampling import generator_for
from unlearning_trainer.errors import DataError, SpecError
from unlearning_trainer.evaluation.membership import MembershipAttacks, auc, percentile
from unlearning_trainer.models.loading import load_adapter
from unlearning_trainer.objectives import losses
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import MembershipSpec, parse_job


def test_auc_is_the_share_of_member_non_member_pairs_the_lower_score_tells_apart():
    assert auc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])) == 1.0
    assert auc(torch.tensor([0.3, 0.4]), torch.tensor([0.1, 0.2])) == 0.0
    assert auc(torch.tensor([0.1, 0.5]), torch.tensor([0.3, 0.5])) == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_percentile_counts_non_members_below_and_half_the_ties():
    non_members = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert percentile(0.5, non_members) == 0.0
    assert percentile(2.0, non_members) == pytest.approx(100 * (1 + 0.5) / 4)
    assert percentile(9.0, non_members) == 100.0


@pytest.fixture
def workspace(scenario, tmp_path):
    return copy_scenario(scenario, tmp_path)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory) -> tuple[object, np.ndarray]:
    """A tiny DDPM trained 400 steps on 8 blobs plus the glyph (it memorizes them), as a loaded adapter."""
    members = np.concatenate([retain_images(8), forget_glyph()[None]])
    data = torch.from_numpy(members).float()[:, None] / 127.5 - 1
    unet, scheduler = builders.tiny_unet(sample_size=8, block_out_channels=(16, 32)), builders.ddpm_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for step in range(400):
        g = generator_for(0, step)
        x = data[torch.randint(0, len(data), (32,), generator=g)]
        noise = losses.draw_noise(x.shape, scheduler.alphas_cumprod, g)
        loss = losses.naive_deletion(lambda m, t: unet(m, t).sample, x, noise).keep
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = builders.save_pipeline(unet, scheduler, tmp_path_factory.mktemp("memorized") / "model")
    return load_adapter(folder), members


def test_both_attacks_tell_training_images_from_unseen_ones(memorized):
    adapter, members = memorized
    unseen = retain_images(64, seed=1)
    trained = grayscale_set(members[:8])
    attacks = MembershipAttacks(
        adapter,
        MembershipSpec(),
        seed=0,
        device=torch.device("cpu"),
        members=trained.take(torch.arange(8)),
        holdout=grayscale_set(unseen),
        forget=grayscale_set(members[:2]),
    )
    result = attacks(adapter.unet.eval()).metrics
    assert result["mia_loss_auc"] > 0.8 and result["mia_sima_auc"] > 0.8, result
    assert result["mia_loss_forget_percentile"] < 5 and result["mia_sima_forget_percentile"] < 5, result
    assert attacks(adapter.unet).metrics == result, "fixed noise: the same weights score the same"


def test_a_timestep_past_the_schedule_names_the_field(memorized):
    adapter, members = memorized
    some = grayscale_set(members[:2])
    with pytest.raises(SpecError, match=r"spec\.evaluation\.membership: timestep 1000 .* 1000 training timesteps"):
        MembershipAttacks(
            adapter,
            MembershipSpec(lossTimesteps=[10, 1000]),
            seed=0,
            device=torch.device("cpu"),
            members=some.take(torch.arange(2)),
            holdout=some,
            forget=some,
        )


def _with_holdout(workspace, job_document, images: np.ndarray) -> dict:
    builders.write_image_folder(images, workspace / "holdout")
    job_document["spec"]["data"]["holdout"] = {"uri": "holdout"}
    return job_document


def test_a_job_with_a_holdout_reports_membership_before_and_after(workspace, job_document):
    job = _with_holdout(workspace, job_document, retain_images(24, seed=7))
    metrics = run_job(resolve_local_uris(parse_job(job), workspace), show_progress=False).metrics
    for entry in (metrics["before"], metrics["after"]):
        for attack in ("loss", "sima"):
            assert 0 <= entry[f"mia_{attack}_auc"] <= 1 and 0 <= entry[f"mia_{attack}_forget_percentile"] <= 100
    record = json.loads((workspace / "out" / "audit.json").read_text())
    membership = record["membership"]
    assert membership["evaluated"] and (membership["members"], membership["nonMembers"]) == (16, 24)
    assert membership["attacks"]["sima"]["aucAfter"] == metrics["after"]["mia_sima_auc"]
    (image,) = membership["forgetImages"]["after"]  # the three forget files are one distinct image
    assert image["file"].endswith(".png") and set(image) == {"file", "loss", "sima"}
    assert image["loss"] == metrics["after"]["mia_loss_forget_percentile"]
    assert len(membership["forgetImages"]["before"]) == 1
    assert any("held-out images" in limit for limit in membership["limits"])
    check = record["verdict"]["checks"][-1]
    assert check["check"].startswith("forget images score like non-members") and check["threshold"] == ">= 5.0"
    assert "membership inference (16 members vs 24 held-out images" in audit.render(record)


def test_without_a_holdout_the_audit_says_the_check_was_skipped(workspace, job_document):
    job_document["spec"]["training"]["steps"] = 2
    run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
    record = json.loads((workspace / "out" / "audit.json").read_text())
    assert record["membership"] == {"evaluated": False, "reason": audit.NO_HOLDOUT}
    assert not any("non-members" in check["check"] for check in record["verdict"]["checks"])
    assert "membership inference: skipped: the job has no data.holdout" in audit.render(record)


def test_a_holdout_with_a_forget_image_is_refused(workspace, job_document):
    job = _with_holdout(workspace, job_document, np.concatenate([retain_images(4, seed=7), forget_glyph()[None]]))
    with pytest.raises(DataError, match=r"spec\.data\.holdout\.uri: 1 of its 5 images are copies of forget images"):
        run_job(resolve_local_uris(parse_job(job), workspace), show_progress=False)
