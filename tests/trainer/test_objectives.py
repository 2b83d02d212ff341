"""Objectives: forward-pass counts, norm fixing, the EraseDiff rule, and the optimizer step that applies them."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from unlearning_trainer.objectives import gradients, losses
from unlearning_trainer.objectives.methods import FORWARD_PASSES, Objective
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import METHODS, MethodSpec
from unlearning_trainer.training.step import MicroBatch, Stepper

BATCH = 6


@pytest.fixture
def unet() -> torch.nn.Module:
    return builders.tiny_unet(sample_size=8, block_out_channels=(8, 16))


def _batch(unet: torch.nn.Module, seed: int = 0) -> MicroBatch:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(BATCH, 1, 8, 8, generator=g) * 2 - 1
    forget = torch.ones(BATCH, 1, 8, 8) * 0.5
    noise = losses.draw_noise(keep.shape, builders.ddpm_scheduler().alphas_cumprod, g)

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(m, t).sample

    neighbours = torch.rand(BATCH, 2, 1, 8, 8, generator=g) * 2 - 1
    return MicroBatch(
        keep=keep, forget=forget, denoise_keep=denoise, denoise_forget=denoise, noise=noise, neighbours=neighbours
    )


@pytest.mark.parametrize("method", METHODS)
def test_forward_pass_counts(unet: torch.nn.Module, method: str):
    calls = []
    unet.register_forward_hook(lambda *_: calls.append(1))
    batch = _batch(unet)
    Objective(MethodSpec(name=method)).terms(
        batch.denoise_keep, batch.denoise_forget, batch.keep, batch.forget, batch.noise, batch.neighbours
    )
    assert len(calls) == FORWARD_PASSES[method]
    assert FORWARD_PASSES["siss"] == 1 and FORWARD_PASSES["siss-no-is"] == 2


def _flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> torch.Tensor:
    pairs = zip(grads, params, strict=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in pairs])


def _norm_fixed(g_keep: torch.Tensor, g_forget: torch.Tensor, c: float) -> tuple[torch.Tensor, float]:
    combination = gradients.norm_fixed(gradients.global_norm(g_forget), c)
    return gradients.apply(combination, g_keep.clone(), g_forget.clone()), -combination.forget


def test_norm_fixing_sets_the_forget_component_to_exactly_c():
    g = torch.Generator().manual_seed(0)
    g_keep, g_forget = torch.randn(1000, generator=g), torch.randn(1000, generator=g) * 37.0
    update, factor = _norm_fixed(g_keep, g_forget, 5.0)
    assert gradients.global_norm(update - g_keep) == pytest.approx(5.0, rel=1e-6)
    assert factor == pytest.approx(5.0 / gradients.global_norm(g_forget))
    cosine = torch.nn.functional.cosine_similarity(g_keep - update, g_forget, dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-6)


def test_norm_fixing_guards_a_zero_forget_gradient():
    g_keep = torch.randn(10)
    update, factor = _norm_fixed(g_keep, torch.zeros(10), 5.0)
    assert factor == 0.0
    torch.testing.assert_close(update, g_keep)
    assert torch.isfinite(update).all()


def test_norms_and_inner_products_are_float64_sums_over_chunks(monkeypatch):
    monkeypatch.setattr(gradients, "CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(100, generator=g), torch.randn(100, generator=g)
    assert gradients.inner(a, b) == pytest.approx(torch.dot(a.double(), b.double()).item(), rel=1e-12)
    assert gradients.global_norm(a) == pytest.approx(a.double().norm().item(), rel=1e-12)


def test_erasediff_coefficient():
    g_keep, g_forget = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    combination = gradients.erasediff(gradients.inner(g_keep, g_forget), gradients.global_norm(g_forget), eta=0.1)
    assert combination.forget == pytest.approx(0.1 + 0.5)
    torch.testing.assert_close(gradients.apply(combination, g_keep.clone(), g_forget), g_keep + 0.6 * g_forget)
    assert gradients.erasediff(1.0, 1.0, eta=0.1).forget == 0.0


class _RecordingSGD(torch.optim.SGD):
    """Records the gradient the step hands to the optimizer (after combination and clipping)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, lr=0.0)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        params = [p for group in self.param_groups for p in group["params"]]
        self.seen.append(_flat(tuple(p.grad for p in params), params).clone())
        return super().step(closure)


def _reference_gradients(unet: torch.nn.Module, method: MethodSpec, batch: MicroBatch):
    params = list(unet.parameters())
    terms = Objective(method).terms(batch.denoise_keep, batch.denoise_forget, batch.keep, batch.forget, batch.noise)
    g_keep = _flat(torch.autograd.grad(terms.keep, params, retain_graph=True, allow_unused=True), params)
    g_forget = _flat(torch.autograd.grad(terms.forget, params, allow_unused=True), params)
    return g_keep, g_forget


def _stepper(unet: torch.nn.Module, method: MethodSpec) -> tuple[Stepper, _RecordingSGD]:
    optimizer = _RecordingSGD(list(unet.parameters()))
    stepper = Stepper(
        Objective(method),
        Accelerator(cpu=True),
        unet,
        optimizer,
        max_grad_norm=1e9,
        refresh_every=method.forget_norm_refresh_every,
    )
    return stepper, optimizer


def test_siss_step_applies_the_norm_fixed_combination(unet: torch.nn.Module):
    method = MethodSpec(name="siss", forget_grad_norm=0.5)
    g_keep, g_forget = _reference_gradients(unet, method, _batch(unet))
    stepper, optimizer = _stepper(unet, method)
    stats = stepper(0, [_batch(unet)])
    expected = g_keep - 0.5 / gradients.global_norm(g_forget) * g_forget
    torch.testing.assert_close(optimizer.seen[0], expected, rtol=1e-4, atol=1e-6)
    assert stats["grad_norm_forget"] == pytest.approx(gradients.global_norm(g_forget), rel=1e-5)


def test_accumulation_averages_micro_batches(unet: torch.nn.Module):
    method = MethodSpec(name="siss-no-is", forget_grad_norm=0.5)
    refs = [_reference_gradients(unet, method, _batch(unet, seed)) for seed in (1, 2)]
    g_keep = (refs[0][0] + refs[1][0]) / 2
    g_forget = (refs[0][1] + refs[1][1]) / 2
    stepper, optimizer = _stepper(unet, method)
    stepper(0, [_batch(unet, 1), _batch(unet, 2)])
    expected = g_keep - 0.5 / gradients.global_norm(g_forget) * g_forget
    torch.testing.assert_close(optimizer.seen[0], expected, rtol=1e-4, atol=1e-6)


def test_single_backward_option_reuses_the_cached_scale(unet: torch.nn.Module):
    method = MethodSpec(name="siss", forget_grad_norm=0.5, forget_norm_refresh_every=3)
    stepper, optimizer = _stepper(unet, method)
    first = stepper(0, [_batch(unet, 1)])
    assert first["single_backward"] == 0.0 and stepper.cached_scale == pytest.approx(first["forget_scale"])
    g_keep, g_forget = _reference_gradients(unet, method, _batch(unet, 2))
    second = stepper(1, [_batch(unet, 2)])
    assert second["single_backward"] == 1.0
    torch.testing.assert_close(optimizer.seen[1], g_keep - stepper.cached_scale * g_forget, rtol=1e-4, atol=1e-5)
    assert stepper(3, [_batch(unet, 3)])["single_backward"] == 0.0


def test_refresh_every_step_is_the_exact_step(unet: torch.nn.Module):
    exact_unet = builders.tiny_unet(sample_size=8, block_out_channels=(8, 16))
    exact_unet.load_state_dict(unet.state_dict())
    exact, exact_opt = _stepper(exact_unet, MethodSpec(name="siss", forget_grad_norm=0.5))
    once, once_opt = _stepper(unet, MethodSpec(name="siss", forget_grad_norm=0.5, forget_norm_refresh_every=1))
    for step in range(3):
        exact(step, [_batch(exact_unet, step)])
        assert once(step, [_batch(unet, step)])["single_backward"] == 0.0
    for a, b in zip(exact_opt.seen, once_opt.seen, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("method", "buffers"), [("naive", 1), ("siss", 2), ("siss-no-is", 2), ("neggrad", 1)])
def test_the_update_is_formed_in_place_in_one_gradient_buffer(unet: torch.nn.Module, monkeypatch, method, buffers):
    """Lean memory: a method with two gradients allocates two parameter-sized buffers and hands the optimizer
    views of one of them; no flat copy is made on the way."""
    from unlearning_trainer.training import step as step_module

    made: list[torch.Tensor] = []

    class Counted(step_module.GradientBuffer):
        def __init__(self, params: list[torch.Tensor]) -> None:
            super().__init__(params)
            made.append(self.flat)

    monkeypatch.setattr(step_module, "GradientBuffer", Counted)
    stepper, optimizer = _stepper(unet, MethodSpec(name=method))
    storages: set[int] = set()
    original = optimizer.step

    def step(closure=None):  # type: ignore[no-untyped-def]
        storages.update(p.grad.untyped_storage().data_ptr() for p in unet.parameters())
        return original(closure)

    optimizer.step = step
    stepper(0, [_batch(unet, 1), _batch(unet, 2)])
    assert len(made) == buffers
    assert storages == {made[0].untyped_storage().data_ptr()} or storages == {made[-1].untyped_storage().data_ptr()}


def test_the_all_reduce_covers_every_element_one_bucket_at_a_time(unet: torch.nn.Module, monkeypatch):
    from unlearning_trainer.training import step as step_module

    monkeypatch.setattr(step_module, "BUCKET_ELEMENTS", 1000)
    sizes: list[int] = []

    class TwoProcesses:
        num_processes = 2

        def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
            assert reduction == "mean"
            sizes.append(tensor.numel())
            return tensor + 1.0

    stepper, _ = _stepper(unet, MethodSpec(name="naive"))
    stepper.accelerator = TwoProcesses()  # type: ignore[assignment]
    buffer = step_module.GradientBuffer(stepper.params)
    buffer.flat.copy_(torch.arange(buffer.flat.numel(), dtype=buffer.flat.dtype))
    stepper._all_reduce(buffer)
    torch.testing.assert_close(buffer.flat, torch.arange(buffer.flat.numel(), dtype=buffer.flat.dtype) + 1.0)
    assert max(sizes) == 1000 and sum(sizes) == buffer.flat.numel() and len(sizes) > 1


def test_clipping_caps_the_global_norm(unet: torch.nn.Module):
    optimizer = _RecordingSGD(list(unet.parameters()))
    stepper = Stepper(Objective(MethodSpec(name="naive")), Accelerator(cpu=True), unet, optimizer, max_grad_norm=1.0)
    stats = stepper(0, [_batch(unet)])
    assert stats["grad_norm"] > 1.0
    assert gradients.global_norm(optimizer.seen[0]) == pytest.approx(1.0, rel=1e-4)


def test_gradient_checkpointing_leaves_both_siss_gradients_unchanged(monkeypatch):
    """diffusers' switch recomputes activations in the backward pass: less memory, the same keep and forget
    gradients (compared exactly up to float rounding of the recomputation)."""
    import torch.utils.checkpoint

    recomputed_blocks = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: recomputed_blocks.append(1) or checkpoint(*a, **k)
    )
    generator = torch.Generator().manual_seed(0)
    keep, forget = torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1, torch.rand(4, 1, 8, 8, generator=generator)
    noise = losses.draw_noise(keep.shape, builders.ddpm_scheduler().alphas_cumprod, generator)

    def gradients_with(checkpointing: bool) -> list[torch.Tensor]:
        unet = builders.tiny_unet(sample_size=8, block_out_channels=(8, 16), seed=3).train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        assert unet.is_gradient_checkpointing == checkpointing
        terms = losses.siss(lambda m, t: unet(m, t).sample, keep, forget, noise, 0.5)
        params = [p for p in unet.parameters() if p.requires_grad]
        return [*torch.autograd.grad(terms.keep, params, retain_graph=True), *torch.autograd.grad(terms.forget, params)]

    plain = gradients_with(False)
    assert not recomputed_blocks
    recomputed = gradients_with(True)
    assert recomputed_blocks, "the blocks must really run under torch.utils.checkpoint"
    for a, b in zip(plain, recomputed, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
