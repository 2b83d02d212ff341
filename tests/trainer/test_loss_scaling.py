"""fp16 loss scaling in the two-gradient step, tested on the CPU with torch's GradScaler.

accelerate attaches a GradScaler only for fp16 on a GPU, so these tests hand one to a CPU accelerator. Scaling
every loss by a power of two scales every gradient exactly (no rounding in float32 away from overflow and the
subnormal range), so a correct step must give the same weights with and without the scale: both SISS
gradients must carry it when the forget norm is fixed, and the combination must be unscaled exactly once.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import copy_scenario, write_job
from unlearning_trainer.errors import SpecError
from unlearning_trainer.objectives import losses
from unlearning_trainer.objectives.methods import Objective
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import MethodSpec, parse_job
from unlearning_trainer.training.step import MicroBatch, Stepper

SCALE = 2.0**14


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return builders.tiny_unet(sample_size=8, block_out_channels=(8, 16))


def _batch(unet: torch.nn.Module, seed: int) -> MicroBatch:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    forget = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = losses.draw_noise(keep.shape, builders.ddpm_scheduler().alphas_cumprod, g)
    neighbours = torch.rand(4, 2, 1, 8, 8, generator=g) * 2 - 1

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(m, t).sample

    return MicroBatch(keep, forget, denoise, denoise, noise, neighbours)


def _train(method: MethodSpec, scale: float | None, steps: int = 3) -> tuple[dict[str, torch.Tensor], list[dict]]:
    accelerator = Accelerator(cpu=True)
    if scale is not None:
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    unet = _unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    stepper = Stepper(
        Objective(method),
        accelerator,
        unet,
        optimizer,
        max_grad_norm=0.5,
        refresh_every=method.forget_norm_refresh_every,
        scheduler=scheduler,
    )
    stats = [stepper(step, [_batch(unet, 2 * step), _batch(unet, 2 * step + 1)]) for step in range(steps)]
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}, stats


@pytest.mark.parametrize(
    "method",
    [
        MethodSpec(name="siss", forget_grad_norm=0.5),
        MethodSpec(name="siss", forget_grad_norm=0.5, forget_norm_refresh_every=2),
        MethodSpec(name="erasediff"),
        MethodSpec(name="neggrad"),
        MethodSpec(name="retrack", k=2),
    ],
    ids=["siss", "siss-single-backward", "erasediff", "neggrad", "retrack"],
)
def test_a_loss_scaled_step_gives_the_weights_of_the_unscaled_step(method: MethodSpec):
    torch.set_flush_denormal(True)
    plain, plain_stats = _train(method, None)
    scaled, scaled_stats = _train(method, SCALE)
    for key in plain:
        torch.testing.assert_close(scaled[key], plain[key], rtol=1e-6, atol=1e-9, msg=key)
    for a, b in zip(plain_stats, scaled_stats, strict=True):
        assert b["loss_scale"] == SCALE and b["step_skipped"] == 0.0
        for key in ("grad_norm", "grad_norm_keep", "grad_norm_forget", "forget_scale", "erasediff_coefficient"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), key


@pytest.mark.parametrize("name", ["naive", "siss"])
def test_an_overflowing_step_is_skipped_and_lowers_the_scale(name: str):
    before = _unet().state_dict()
    weights, stats = _train(MethodSpec(name=name), 2.0**127, steps=1)
    assert stats[0]["step_skipped"] == 1.0
    for key, value in before.items():
        assert torch.equal(weights[key], value), f"{key} changed in a skipped step"
    weights, stats = _train(MethodSpec(name=name), 2.0**127, steps=4)
    assert stats[-1]["loss_scale"] < 2.0**127, "the scaler backed off"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_fp16_without_a_gpu_is_refused_naming_the_field(scenario, tmp_path, job_document):
    workspace = copy_scenario(scenario, tmp_path)
    job_document["spec"]["training"]["mixedPrecision"] = "fp16"
    write_job(workspace, job_document)
    with pytest.raises(SpecError, match=r"spec\.training\.mixedPrecision: fp16 needs a CUDA GPU"):
        run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
