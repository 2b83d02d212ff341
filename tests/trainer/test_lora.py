"""SISS on a LoRA adapter: only the adapter trains, norm fixing and clipping see only its parameters, the merged
pipeline equals the adapted U-Net, the adapter alone loads with diffusers' load_lora_weights, and resume works."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from diffusers import DDPMPipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from tests.conftest import copy_scenario
from unlearning_trainer.errors import SpecError
from unlearning_trainer.models.lora import add_lora, has_lora, merged
from unlearning_trainer.objectives.methods import Objective
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import AdapterSpec, MethodSpec, parse_job
from unlearning_trainer.training.step import Stepper

PIXEL_ADAPTER = {"type": "lora", "rank": 2, "targetModules": ["conv1", "conv2", "to_q", "to_v"]}


def _run(workspace, document) -> dict:
    return run_job(resolve_local_uris(parse_job(document), workspace), show_progress=False).metrics


def test_the_step_sees_only_the_adapter_and_merging_keeps_the_function():
    unet = builders.tiny_unet(sample_size=8, block_out_channels=(8, 16))
    total = sum(p.numel() for p in unet.parameters())
    trainable = add_lora(unet, AdapterSpec(rank=2, targetModules=["conv1", "conv2"]))
    assert 0 < trainable < total / 5
    stepper = Stepper(
        Objective(MethodSpec()), Accelerator(cpu=True), unet, torch.optim.AdamW(unet.parameters()), max_grad_norm=1.0
    )
    assert sum(p.numel() for p in stepper.params) == trainable, "norm fixing and clipping act on the adapter only"
    for name, parameter in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    plain = merged(unet)
    assert not has_lora(plain) and has_lora(unet)
    assert set(plain.state_dict()) == set(builders.tiny_unet(sample_size=8, block_out_channels=(8, 16)).state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 300, 900])
    torch.testing.assert_close(plain(x, t).sample, unet(x, t).sample, rtol=1e-4, atol=1e-5)


def test_target_modules_that_match_nothing_name_the_field():
    with pytest.raises(SpecError, match=r"spec\.method\.adapter\.targetModules \['attn_nowhere'\] matched no layer"):
        add_lora(builders.tiny_unet(sample_size=8), AdapterSpec(targetModules=["attn_nowhere"]))


def test_a_lora_job_trains_only_the_adapter_and_publishes_the_merged_pipeline(scenario, job_document, tmp_path):
    workspace = copy_scenario(scenario, tmp_path)
    job_document["spec"]["method"]["adapter"] = PIXEL_ADAPTER
    job_document["spec"]["training"]["learningRate"] = 1e-2
    _run(workspace, job_document)
    metrics = json.loads((workspace / "out" / "metrics.json").read_text())
    assert metrics["status"] == "succeeded" and metrics["spec"]["method"]["adapter"]["rank"] == 2
    checkpoint = load_file(workspace / "out" / "checkpoints" / "step-000004" / "model.safetensors")
    base = load_file(workspace / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    frozen = {key.replace(".base_layer", ""): value for key, value in checkpoint.items() if "lora_" not in key}
    assert frozen.keys() == base.keys() and all(torch.equal(frozen[k], base[k]) for k in base), "base weights frozen"
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in checkpoint.items()), "the adapter trained"
    published = DDPMPipeline.from_pretrained(workspace / "out", use_safetensors=True).unet
    assert set(published.state_dict()) == set(base), "the output is a plain U-Net"
    assert any(not torch.equal(published.state_dict()[k], base[k]) for k in base), "the update is merged in"


def test_a_lora_job_resumes_to_the_same_weights(scenario, job_document, tmp_path):
    workspace = copy_scenario(scenario, tmp_path)
    job_document["spec"]["method"]["adapter"] = PIXEL_ADAPTER
    straight = _run(workspace, job_document)
    job_document["spec"]["output"]["uri"] = "resumed"
    job_document["spec"]["training"]["steps"] = 2
    _run(workspace, job_document)
    job_document["spec"]["training"]["steps"] = 4
    resumed = _run(workspace, job_document)
    assert (straight["resumedFrom"], resumed["resumedFrom"]) == (0, 2)
    first, second = (
        load_file(workspace / name / "unet" / "diffusion_pytorch_model.safetensors") for name in ("out", "resumed")
    )
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)


def test_the_adapter_alone_loads_into_the_base_pipeline(text_to_image_scenario, job_document, tmp_path):
    workspace = copy_scenario(text_to_image_scenario, tmp_path)
    spec = {"rank": 4, "alpha": 8}
    job_document["spec"]["method"]["adapter"] = spec
    job_document["spec"]["training"]["learningRate"] = 1e-2
    job_document["spec"]["evaluation"].update({"numSamples": 4, "inferenceSteps": 2, "retainImages": 8})
    job_document["spec"]["output"] = {"uri": "adapter-only", "format": "adapter"}
    _run(workspace, job_document)
    out = workspace / "adapter-only"
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "unet").exists()
    assert json.loads((out / "audit.json").read_text())["model"]["sha256After"] is not None

    def pipeline() -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(workspace / "model", use_safetensors=True, safety_checker=None)

    trained = pipeline().unet
    add_lora(trained, AdapterSpec(**spec))
    checkpoint = load_file(out / "checkpoints" / "step-000004" / "model.safetensors")
    trained.load_state_dict(checkpoint)
    with_adapter, base = pipeline(), pipeline()
    with_adapter.load_lora_weights(out)
    latents, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 600]), torch.randn(2, 16, 32)
    with torch.no_grad():
        adapted = with_adapter.unet(latents, t, encoder_hidden_states=text).sample
        expected = merged(trained)(latents, t, encoder_hidden_states=text).sample
        untouched = base.unet(latents, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(adapted, expected, rtol=1e-4, atol=1e-5)
    assert (adapted - untouched).abs().max() > 1e-4, "the adapter changes the U-Net"


def test_the_adapter_format_is_refused_for_a_pixel_model(scenario, job_document, tmp_path):
    workspace = copy_scenario(scenario, tmp_path)
    job_document["spec"]["method"]["adapter"] = PIXEL_ADAPTER
    job_document["spec"]["output"]["format"] = "adapter"
    with pytest.raises(SpecError, match=r"spec\.output\.format: adapter .* pixel-space DDPM"):
        _run(workspace, job_document)
