"""data.retain.generate: the base model's own generations for each forget caption as the retain set, pairs
that share their caption, the memorization hits dropped, and the set cached in the output for reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TEXT_TO_IMAGE_FORGET_CAPTION, copy_scenario, write_job
from unlearning_trainer.data import generated
from unlearning_trainer.errors import DataError
from unlearning_trainer.models.adapter import DiffusionAdapter
from unlearning_trainer.models.latent import LatentAdapter
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.spec import parse_job
from unlearning_trainer.training import loop

OTHER_CAPTION = "two red dots"


def test_pairs_take_keep_images_of_their_forget_images_caption():
    groups = generated.caption_groups(["a", "b", "a"], ["b", "a", "a", "b", "b"])
    assert [g.tolist() for g in groups] == [[1, 2], [0, 3, 4], [1, 2]]
    keep = generated.paired_keep_indices(torch.tensor([0, 1, 7, 5]), torch.tensor([0, 1, 2, 1]), groups)
    assert keep.tolist() == [1, 3, 2, 4]


def _workspace(text_to_image_scenario: Path, tmp_path: Path, job_document: dict) -> tuple[Path, dict]:
    """The tiny Stable Diffusion scenario with two memorized prompts, and a SISS job that generates its keep set."""
    workspace = copy_scenario(text_to_image_scenario, tmp_path, parts=("model", "forget"))
    names = sorted(p.name for p in (workspace / "forget").glob("*.png"))
    captions = [TEXT_TO_IMAGE_FORGET_CAPTION, OTHER_CAPTION, TEXT_TO_IMAGE_FORGET_CAPTION][: len(names)]
    (workspace / "forget" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "text": c}) + "\n" for n, c in zip(names, captions, strict=True))
    )
    job_document["spec"]["data"]["retain"] = {"generate": {"imagesPerCaption": 3}}
    job_document["spec"]["training"].update({"steps": 2, "batchSize": 4, "checkpointEvery": 2})
    job_document["spec"]["evaluation"].update(
        {"every": 2, "numSamples": 2, "inferenceSteps": 2, "retainImages": 4, "nll": {"timesteps": 4}}
    )
    return workspace, job_document


class _CaptionSpy:
    """Records the captions each training micro-batch conditions its keep and forget passes on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str] | None] = []
        self.training = False
        original, batches = LatentAdapter.denoiser, loop._micro_batches

        def denoiser(adapter: DiffusionAdapter, unet: torch.nn.Module, captions: list[str] | None):  # type: ignore[no-untyped-def]
            if self.training:
                self.calls.append(None if captions is None else list(captions))
            return original(adapter, unet, captions)

        def micro_batches(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.training = True
            try:
                return batches(*args, **kwargs)
            finally:
                self.training = False

        monkeypatch.setattr(LatentAdapter, "denoiser", denoiser)
        monkeypatch.setattr(loop, "_micro_batches", micro_batches)

    def pairs(self) -> list[tuple[list[str], list[str]]]:
        """(keep captions, forget captions) of each micro-batch: the loop asks for the two denoisers in turn."""
        return list(zip(self.calls[0::2], self.calls[1::2], strict=True))


def test_the_siss_mixture_is_denoised_under_the_forget_caption(
    text_to_image_scenario, tmp_path, job_document, monkeypatch
):
    workspace, document = _workspace(text_to_image_scenario, tmp_path, job_document)
    spy = _CaptionSpy(monkeypatch)
    metrics = run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False).metrics
    pairs = spy.pairs()
    assert len(pairs) == 2, "one micro-batch per step"
    for keep, forget in pairs:
        assert keep == forget, "each keep image was generated for its forget image's caption"
    assert {OTHER_CAPTION, TEXT_TO_IMAGE_FORGET_CAPTION} <= {c for _, forget in pairs for c in forget}

    folder = workspace / "out" / generated.FOLDER
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert sorted({row["text"] for row in rows}) == sorted([OTHER_CAPTION, TEXT_TO_IMAGE_FORGET_CAPTION])
    assert len(rows) == 6 and metrics["data"]["retainFrom"] == "generated" and metrics["data"]["retain"] == 6
    assert [entry["generated"] for entry in metrics["data"]["generated"]] == [3, 3]
    audit = json.loads((workspace / "out" / "audit.json").read_text())
    assert audit["data"]["retainFrom"] == "generated" and audit["data"]["uri"] is None


def test_an_ordinary_retain_set_conditions_the_mixture_on_other_captions(
    text_to_image_scenario, tmp_path, job_document, monkeypatch
):
    """What the generated set fixes: with a hand-made retain set the forget term never sees the forget caption."""
    workspace, document = _workspace(text_to_image_scenario, tmp_path, job_document)
    copy_scenario(text_to_image_scenario, workspace, parts=("retain",))
    document["spec"]["data"]["retain"] = {"uri": "retain"}
    spy = _CaptionSpy(monkeypatch)
    run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False)
    for keep, forget in spy.pairs():
        assert set(keep) == {"a coloured blob"} and "a coloured blob" not in forget


def test_a_rerun_reuses_the_generated_set(text_to_image_scenario, tmp_path, job_document, monkeypatch):
    workspace, document = _workspace(text_to_image_scenario, tmp_path, job_document)
    run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False)
    record = (workspace / "out" / generated.FOLDER / generated.RECORD).read_text()
    made = []
    monkeypatch.setattr(generated, "generate_retain", lambda *a, **k: made.append(1))
    document["spec"]["training"]["steps"] = 4
    metrics = run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False).metrics
    assert made == [] and metrics["resumedFrom"] == 2, "the same images, so the checkpoint's data digest matches"
    assert (workspace / "out" / generated.FOLDER / generated.RECORD).read_text() == record


def test_generations_that_are_memorization_hits_are_dropped(text_to_image_scenario, tmp_path, job_document):
    workspace, document = _workspace(text_to_image_scenario, tmp_path, job_document)
    document["spec"]["evaluation"]["memorizationThreshold"] = 1e9
    with pytest.raises(DataError, match=r"spec\.data\.retain\.generate: all 3 generations .* are memorization hits"):
        run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False)


def test_check_data_generates_the_set_into_a_scratch_folder(text_to_image_scenario, tmp_path, job_document):
    workspace, document = _workspace(text_to_image_scenario, tmp_path, job_document)
    result = subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "check-data", str(write_job(workspace, document))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "retain set: 6 images generated by the base model for 2 caption(s); 0 memorization hits dropped" in (
        result.stdout
    )
    assert not (workspace / "out").exists(), "check-data writes nothing into the output"
