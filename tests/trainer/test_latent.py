"""Stable Diffusion through the same job spec: a frozen VAE and text encoder, captions that condition the
U-Net, and a StableDiffusionPipeline as the output. The model is tiny and built in code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from tests.conftest import TEXT_TO_IMAGE_FORGET_CAPTION, TEXT_TO_IMAGE_SIZE, copy_scenario, write_job
from unlearning_trainer.errors import DataError
from unlearning_trainer.models.loading import load_adapter

SIZE = TEXT_TO_IMAGE_SIZE
FORGET_CAPTION = TEXT_TO_IMAGE_FORGET_CAPTION


def _run(job: Path) -> subprocess.CompletedProcess[str]:
    """`unlearn run` on a job file, with the cache next to it."""
    return subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "UNLEARNING_CACHE_DIR": str(job.parent / "cache")},
    )


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    (path,) = (folder / component).glob("*.safetensors")
    return load_file(path)


def test_a_stable_diffusion_job_trains_only_the_unet_and_publishes_a_pipeline(
    text_to_image_scenario, job_document, tmp_path
):
    workspace = copy_scenario(text_to_image_scenario, tmp_path)
    job_document["spec"]["evaluation"].update({"numSamples": 4, "inferenceSteps": 2, "retainImages": 8})
    result = _run(write_job(workspace, job_document))
    assert result.returncode == 0, result.stderr[-3000:]
    out = workspace / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "succeeded" and [h["step"] for h in metrics["history"]] == [0, 2, 4]
    assert all(np.isfinite(metrics["after"][key]) for key in ("forget_nll_bpd", "forget_loss", "retain_loss"))
    assert 0.0 <= metrics["after"]["memorization_rate"] <= 1.0

    base, unlearned = workspace / "model", out
    changed = _weights(unlearned, "unet")
    assert any(not torch.equal(changed[k], v) for k, v in _weights(base, "unet").items()), "the U-Net must train"
    for frozen in ("vae", "text_encoder"):
        before, after = _weights(base, frozen), _weights(unlearned, frozen)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), frozen
    pipeline = StableDiffusionPipeline.from_pretrained(unlearned, use_safetensors=True, safety_checker=None)
    assert pipeline.tokenizer(FORGET_CAPTION).input_ids[1] == pipeline.tokenizer.convert_tokens_to_ids("x</w>")
    assert (out / "samples" / "step-000004.png").is_file()


def test_latents_are_deterministic_and_captions_condition_the_denoiser(text_to_image_scenario):
    adapter = load_adapter(text_to_image_scenario / "model")
    assert adapter.kind == "latent" and adapter.image_shape == (3, SIZE, SIZE)
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    latents = adapter.to_diffusion_space(images)
    assert latents.shape == (2, 4, SIZE // 2, SIZE // 2)
    assert torch.equal(latents, adapter.to_diffusion_space(images)), "the posterior mean, not a sample"
    t = torch.tensor([10, 500])
    with torch.no_grad():
        forget = adapter.denoiser(adapter.unet, [FORGET_CAPTION] * 2)(latents, t)
        other = adapter.denoiser(adapter.unet, ["a coloured blob"] * 2)(latents, t)
        unconditional = adapter.denoiser(adapter.unet, None)(latents, t)
        empty = adapter.denoiser(adapter.unet, ["", ""])(latents, t)
    assert not torch.allclose(forget, other), "the caption must reach the U-Net"
    assert torch.equal(unconditional, empty)
    samples = adapter.generate(adapter.unet, 3, seed=0, steps=2, prompt=FORGET_CAPTION)
    assert samples.shape == (3, 3, SIZE, SIZE) and samples.min() >= 0.0 and samples.max() <= 1.0
    assert torch.equal(samples, adapter.generate(adapter.unet, 3, seed=0, steps=2, prompt=FORGET_CAPTION))


def test_an_unsupported_pipeline_is_named_with_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(DataError) as caught:
        load_adapter(tmp_path)
    message = str(caught.value)
    assert "spec.model.uri" in message and "StableDiffusionXLPipeline" in message
    assert "Fix: use one of DDIMPipeline, DDPMPipeline, StableDiffusionPipeline" in message


def _with_prediction(source: Path, target: Path, prediction: str) -> Path:
    shutil.copytree(source / "model", target / "model")
    config_path = target / "model" / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"prediction_type": prediction}))
    return target / "model"


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_v_and_sample_predictions_are_converted_to_the_noise_exactly(prediction):
    """Checked against diffusers' own scheduler: its velocity and its noising, at every kind of timestep."""
    from diffusers import DDPMScheduler

    from unlearning_trainer.models.prediction import to_epsilon

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    noisy = scheduler.add_noise(x0, noise, t)
    output = scheduler.get_velocity(x0, noise, t) if prediction == "v_prediction" else x0
    recovered = to_epsilon(output, noisy, t, scheduler.alphas_cumprod.double(), prediction)
    assert torch.allclose(recovered, noise, atol=2e-3 if prediction == "sample" else 1e-5)


@pytest.mark.parametrize("fixture", ["scenario", "text_to_image_scenario"])
def test_a_v_prediction_model_is_read_through_its_denoiser_as_noise(fixture, request, tmp_path):
    from unlearning_trainer.models.prediction import to_epsilon

    adapter = load_adapter(_with_prediction(request.getfixturevalue(fixture), tmp_path, "v_prediction"))
    assert adapter.prediction == "v_prediction"
    shape = (2, *(adapter.image_shape if fixture == "scenario" else (4, *adapter.latent_size)))
    m, t = torch.randn(shape, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700])
    captions = None if fixture == "scenario" else ["a red x", "a red x"]
    with torch.no_grad():
        raw = adapter.unet(m, t, **({} if captions is None else {"encoder_hidden_states": adapter._embed(captions)}))
        expected = to_epsilon(raw.sample, m, t, adapter.alphas_cumprod, "v_prediction")
        assert torch.allclose(adapter.denoiser(adapter.unet, captions)(m, t), expected)
        assert not torch.allclose(expected, raw.sample)


def test_a_v_prediction_ddpm_unlearns_and_keeps_its_prediction_type(scenario, job_document, tmp_path):
    _with_prediction(scenario, tmp_path, "v_prediction")
    for name in ("forget", "retain"):
        shutil.copytree(scenario / name, tmp_path / name)
    result = _run(write_job(tmp_path, job_document))
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"


def test_an_unknown_prediction_type_is_refused(scenario, tmp_path):
    with pytest.raises(DataError, match=r"spec.model.uri: the scheduler's prediction_type is 'flow'.*Fix:"):
        load_adapter(_with_prediction(scenario, tmp_path, "flow"))


def test_the_probability_flow_likelihood_is_refused_for_latents(text_to_image_scenario, job_document, tmp_path):
    copy_scenario(text_to_image_scenario, tmp_path)
    job_document["spec"]["evaluation"]["nll"] = {"method": "pf-ode"}
    result = _run(write_job(tmp_path, job_document))
    assert result.returncode == 2
    assert "spec.evaluation.nll.method" in result.stderr and "Fix: use vlb" in result.stderr


def test_memorization_is_looked_for_under_every_distinct_forget_caption(text_to_image_scenario, tmp_path):
    """A takedown of two captioned images: the samples are split over both captions, each its own seed."""
    from unlearning_trainer.data.images import load_images
    from unlearning_trainer.data.sources import open_source
    from unlearning_trainer.evaluation.evaluator import Evaluator
    from unlearning_trainer.spec import EvaluationSpec

    adapter = load_adapter(text_to_image_scenario / "model")
    forget = load_images(open_source(text_to_image_scenario / "forget", field="f"), adapter.image_shape)
    forget = type(forget)(forget.pixels, forget.names, ["1", "2", "3"], ["a red x", "a red x", "a boxed cross"])
    retain = load_images(open_source(text_to_image_scenario / "retain", field="r"), adapter.image_shape)
    spec = EvaluationSpec(num_samples=5, inference_steps=2)
    evaluator = Evaluator(adapter, spec, forget=forget, retain=retain, samples_dir=tmp_path, device=torch.device("cpu"))
    calls = []
    original = adapter.generate

    def spy(unet, count, **options):
        calls.append((options["prompt"], count, options["seed"]))
        return original(unet, count, **options)

    adapter.generate = spy
    samples = evaluator.generate(adapter.unet)
    assert calls == [("a red x", 3, 0), ("a boxed cross", 2, 1)]
    assert samples.shape == (5, *adapter.image_shape)
