"""Each objective moves the forget and keep losses the way it should, on a toy model that saw the forget glyph.

The toy: a tiny U-Net trained for 300 steps on 64 blobs plus 8 copies of the glyph, then unlearned for 20
steps. Losses are ε-prediction errors at fixed (t, ε) draws, reported as after/before ratios.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import forget_glyph, retain_images
from unlearning_trainer.data.sampling import generator_for
from unlearning_trainer.objectives import losses
from unlearning_trainer.objectives.methods import Objective
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import MethodSpec
from unlearning_trainer.training.neighbours import nearest
from unlearning_trainer.training.step import MicroBatch, Stepper

ALPHAS = builders.ddpm_scheduler().alphas_cumprod


def _denoiser(unet: torch.nn.Module) -> losses.Denoiser:
    return lambda m, t: unet(m, t).sample


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    retain = torch.from_numpy(retain_images(64)).float()[:, None] / 127.5 - 1
    forget = torch.from_numpy(forget_glyph()).float()[None, None] / 127.5 - 1
    return retain, forget


def _loss(unet: torch.nn.Module, images: torch.Tensor) -> float:
    x = images.repeat(max(1, 256 // len(images)), 1, 1, 1)
    noise = losses.draw_noise(x.shape, ALPHAS, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return losses.naive_deletion(_denoiser(unet), x, noise).keep.item()


@pytest.fixture(scope="module")
def memorizing_unet() -> torch.nn.Module:
    retain, forget = _images()
    data = torch.cat([retain, forget.expand(8, -1, -1, -1)])
    unet = builders.tiny_unet(sample_size=8, block_out_channels=(16, 32))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for step in range(300):
        g = generator_for(0, step)
        x = data[torch.randint(0, len(data), (32,), generator=g)]
        loss = losses.naive_deletion(_denoiser(unet), x, losses.draw_noise(x.shape, ALPHAS, g)).keep
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
    return unet


def _unlearn(unet: torch.nn.Module, method: MethodSpec) -> tuple[float, float]:
    """(forget-loss ratio, retain-loss ratio) after 20 steps of `method`."""
    retain, forget = _images()
    before = _loss(unet, forget), _loss(unet, retain)
    unet = copy.deepcopy(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, betas=(0.95, 0.999))
    stepper = Stepper(
        Objective(method),
        Accelerator(cpu=True),
        unet,
        optimizer,
        max_grad_norm=1.0,
        refresh_every=method.forget_norm_refresh_every,
    )
    indices, _ = nearest(forget.flatten(1), [(0, retain.flatten(1))], method.k)
    neighbours = retain[indices[0]][None].expand(16, -1, -1, -1, -1) if method.name == "retrack" else None
    for step in range(20):
        g = generator_for(1, step)
        x = retain[torch.randint(0, len(retain), (16,), generator=g)]
        noise = losses.draw_noise(x.shape, ALPHAS, g)
        a = forget.expand(16, -1, -1, -1)
        stepper(step, [MicroBatch(x, a, _denoiser(unet), _denoiser(unet), noise, neighbours)])
    return _loss(unet, forget) / before[0], _loss(unet, retain) / before[1]


def test_naive_deletion_lowers_the_keep_loss_and_barely_touches_the_forget_loss(memorizing_unet):
    forget, keep = _unlearn(memorizing_unet, MethodSpec(name="naive"))
    assert keep < 1.0
    assert forget < 1.5


def test_neggrad_raises_the_forget_loss(memorizing_unet):
    forget, _ = _unlearn(memorizing_unet, MethodSpec(name="neggrad"))
    assert forget > 2.0


def test_erasediff_raises_the_forget_loss(memorizing_unet):
    forget, _ = _unlearn(memorizing_unet, MethodSpec(name="erasediff"))
    assert forget > 1.5


@pytest.mark.parametrize(
    "method",
    [
        MethodSpec(name="siss", forget_grad_norm=1.0),
        MethodSpec(name="siss-no-is", forget_grad_norm=1.0),
        MethodSpec(name="siss", forget_grad_norm=1.0, forget_norm_refresh_every=5),
    ],
    ids=["siss", "siss-no-is", "siss-single-backward"],
)
def test_siss_raises_the_forget_loss_and_keeps_the_retain_loss(memorizing_unet, method):
    forget, keep = _unlearn(memorizing_unet, method)
    assert forget > 2.0
    assert keep < 1.2


def test_retrack_raises_the_forget_loss_and_keeps_the_retain_loss(memorizing_unet):
    forget, keep = _unlearn(memorizing_unet, MethodSpec(name="retrack", k=4, **{"lambda": 0.05}))
    assert forget > 2.0
    assert keep < 1.2
