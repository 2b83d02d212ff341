"""ReTrack: the redirected target against its closed form, the neighbour search, the one-backward step, and jobs
on a pixel and a latent model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import copy_scenario, grayscale_set, write_job
from unlearning_trainer.errors import DataError
from unlearning_trainer.objectives import losses
from unlearning_trainer.objectives.methods import Objective
from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.scenarios import builders
from unlearning_trainer.spec import MethodSpec, parse_job
from unlearning_trainer.training.neighbours import find_neighbours, nearest
from unlearning_trainer.training.step import MicroBatch, Stepper

ALPHAS = builders.ddpm_scheduler().alphas_cumprod


def _schedule(t: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    abar = ALPHAS[torch.tensor(t)].double()
    return abar.sqrt().float(), (1 - abar).sqrt().float()


def test_one_neighbour_is_the_denoising_target_of_that_neighbour():
    g = torch.Generator().manual_seed(0)
    m, n = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 1, 8, 8, generator=g)
    gamma, sigma = _schedule([0, 10, 500, 999])
    target, weights = losses.redirected_target(m, n, gamma, sigma)
    expected = (m - gamma.view(-1, 1, 1, 1) * n[:, 0]) / sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(weights, torch.ones(4, 1))


def test_the_target_is_the_softmax_weighted_mean_of_the_neighbours_targets():
    rng = np.random.default_rng(1)
    m, n = rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 5, 2, 4, 4)) * 0.3
    gamma, sigma = _schedule([300, 600, 900])
    target, weights = losses.redirected_target(torch.from_numpy(m).float(), torch.from_numpy(n).float(), gamma, sigma)
    g, s = gamma.double().numpy(), sigma.double().numpy()
    for b in range(3):
        residuals = m[b][None] - g[b] * n[b]  # v_j σ = m − γ n_j
        logits = -(residuals**2).reshape(5, -1).sum(1) / (2 * s[b] ** 2)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        np.testing.assert_allclose(weights[b].numpy(), p, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(target[b].numpy(), np.tensordot(p, residuals / s[b], axes=1), rtol=1e-4, atol=1e-4)


def test_weights_are_one_hot_near_the_data_and_uniform_in_pure_noise():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    n = torch.stack([a[0] + 0.05, a[0] + 0.5, a[0] - 0.7], 0)[None]  # the first is nearest
    eps = torch.randn(1, 1, 8, 8, generator=g)
    for t, check in ((5, lambda p: p[0] > 0.999), (999, lambda p: (p - 1 / 3).abs().max() < 0.05)):
        gamma, sigma = _schedule([t])
        _, weights = losses.redirected_target(
            gamma.view(-1, 1, 1, 1) * a + sigma.view(-1, 1, 1, 1) * eps, n, gamma, sigma
        )
        assert check(weights[0]), (t, weights)


def test_regressing_to_the_mean_target_has_the_papers_gradient():
    """Σ_j p_j ‖e − v_j‖² and ‖e − v̄‖² differ by a constant in e: their gradients agree."""
    g = torch.Generator().manual_seed(3)
    m, n = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 4, 1, 4, 4, generator=g)
    gamma, sigma = _schedule([100, 400])
    target, weights = losses.redirected_target(m, n, gamma, sigma)
    prediction = torch.randn(2, 1, 4, 4, generator=g, requires_grad=True)
    each = (m[:, None] - gamma.view(-1, 1, 1, 1, 1) * n) / sigma.view(-1, 1, 1, 1, 1)
    paper = (weights * (prediction[:, None] - each).flatten(2).pow(2).sum(2)).sum()
    (paper_grad,) = torch.autograd.grad(paper, prediction)
    (ours_grad,) = torch.autograd.grad((prediction - target).flatten(1).pow(2).sum(), prediction)
    torch.testing.assert_close(ours_grad, paper_grad, rtol=1e-4, atol=1e-4)


def test_nearest_over_chunks_equals_a_full_sort():
    g = torch.Generator().manual_seed(4)
    queries, candidates = torch.randn(5, 7, generator=g), torch.randn(23, 7, generator=g)
    chunks = [(offset, candidates[offset : offset + 3]) for offset in range(0, 23, 3)]
    indices, distances = nearest(queries, chunks, k=4)
    full = torch.cdist(queries.double(), candidates.double())
    assert torch.equal(indices, full.argsort(1)[:, :4])
    torch.testing.assert_close(distances, full.sort(1).values[:, :4])


def test_find_neighbours_keeps_the_encoded_nearest_retain_images():
    rng = np.random.default_rng(5)
    retain = grayscale_set(rng.integers(0, 256, (40, 4, 4), dtype=np.uint8))
    forget = grayscale_set(np.stack([np.asarray(retain.pixels[7, 0]), np.asarray(retain.pixels[30, 0])]) // 2)
    neighbours = find_neighbours(retain, forget, 3, lambda images: images * 2, torch.device("cpu"))
    retain_space = retain.take(torch.arange(40))[0].flatten(1) * 2
    forget_space = forget.take(torch.arange(2))[0].flatten(1) * 2
    assert torch.equal(neighbours.indices, torch.cdist(forget_space, retain_space).argsort(1)[:, :3])
    for f in range(2):
        torch.testing.assert_close(
            neighbours.take(torch.tensor([f]))[0].flatten(1), retain_space[neighbours.indices[f]]
        )


def test_k_larger_than_the_retain_set_names_the_field():
    retain = grayscale_set(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"spec\.method\.k is 10 .* only 4 images"):
        find_neighbours(retain, retain, 10, lambda images: images, torch.device("cpu"))


class _Recorder(torch.optim.SGD):
    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, lr=0.0)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):  # type: ignore[override]
        self.seen.append(torch.cat([p.grad.reshape(-1).clone() for p in self.param_groups[0]["params"]]))


def test_the_step_takes_one_backward_of_the_weighted_terms():
    from accelerate import Accelerator

    unet = builders.tiny_unet(sample_size=8, block_out_channels=(8, 16))
    g = torch.Generator().manual_seed(6)
    keep, forget = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.ones(4, 1, 8, 8) * 0.5
    neighbours = torch.rand(4, 3, 1, 8, 8, generator=g) * 2 - 1
    noise = losses.draw_noise(keep.shape, ALPHAS, g)

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(m, t).sample

    objective = Objective(MethodSpec(name="retrack", **{"lambda": 0.2}, k=3))
    params = list(unet.parameters())
    terms = objective.terms(denoise, denoise, keep, forget, noise, neighbours)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(0.2 * terms.forget + 0.8 * terms.keep, params)])
    backward_calls = []
    for p in params:
        p.register_hook(lambda grad: backward_calls.append(1) or grad)
    optimizer = _Recorder(params)
    stepper = Stepper(objective, Accelerator(cpu=True), unet, optimizer, max_grad_norm=1e9)
    stats = stepper(0, [MicroBatch(keep, forget, denoise, denoise, noise, neighbours)])
    torch.testing.assert_close(optimizer.seen[0], expected, rtol=1e-4, atol=1e-6)
    assert len(backward_calls) == len(params), "one backward pass"
    assert stats["loss_forget"] > 0 and 1 / 3 <= stats["neighbour_weight_max"] <= 1


def test_retrack_without_neighbours_is_a_programming_error():
    with pytest.raises(ValueError, match="nearest retain images"):
        Objective(MethodSpec(name="retrack")).terms(None, None, None, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("fixture", ["scenario", "text_to_image_scenario"])
def test_a_retrack_job_runs_on_pixel_and_latent_models(fixture, request, job_document, tmp_path, caplog):
    workspace = copy_scenario(request.getfixturevalue(fixture), tmp_path)
    job_document["spec"]["method"] = {"name": "retrack", "k": 4, "lambda": 0.5}
    if fixture == "text_to_image_scenario":
        job_document["spec"]["evaluation"].update({"numSamples": 4, "inferenceSteps": 2, "retainImages": 8})
    write_job(workspace, job_document)
    with caplog.at_level("INFO", logger="unlearning_trainer.training"):
        result = run_job(resolve_local_uris(parse_job(job_document), workspace), show_progress=False)
    metrics = json.loads((result.output / "metrics.json").read_text())
    assert metrics["status"] == "succeeded" and metrics["spec"]["method"]["k"] == 4
    assert all(np.isfinite(entry["forget_loss"]) for entry in metrics["history"])
    assert "ReTrack: 4 nearest retain images per forget image (4 distinct)" in caplog.text
