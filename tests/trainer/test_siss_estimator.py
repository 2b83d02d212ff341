"""Monte-Carlo checks that the SISS estimator is unbiased, on a toy linear denoiser with small D.

At mid-to-large t the mixture components overlap, so the importance weights are far from binary and the check has
teeth: a wrong weight (e.g. the raw density ratio without the mixture) fails it by a wide margin.
"""

from __future__ import annotations

import torch

from unlearning_trainer.objectives import losses, weights

DIMS, SAMPLES = 4, 400_000


def _toy_denoiser(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    weight = torch.tensor([[0.9, 0.1, 0.0, -0.2], [0.0, 0.8, 0.3, 0.0], [0.1, 0.0, 0.7, 0.1], [0.0, -0.1, 0.0, 1.1]])
    return 0.3 * m @ weight.T + 0.001 * t[:, None].float()


def _draw(alphas: torch.Tensor, count: int, seed: int) -> losses.NoiseDraw:
    g = torch.Generator().manual_seed(seed)
    return losses.draw_noise((count, DIMS), alphas, g)


def _late_schedule() -> torch.Tensor:
    """ᾱ_t for t = 250..599 of the linear DDPM schedule: components overlap, yet the mean shift is visible."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[250:600]


def _pairs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep_points = torch.randn(5, DIMS, generator=g)
    forget_point = torch.full((1, DIMS), 1.5)
    x = keep_points[torch.randint(0, 5, (count,), generator=g)]
    a = forget_point.expand(count, DIMS)
    return keep_points, x, a


def test_siss_terms_are_unbiased_estimates_of_keep_and_forget_losses():
    alphas = _late_schedule()
    _, x, a = _pairs(SAMPLES, 0)
    for lam in (0.2, 0.5, 0.8):
        siss = losses.siss(_toy_denoiser, x, a, _draw(alphas, SAMPLES, 1), lam)
        naive = losses.naive_deletion(_toy_denoiser, x, _draw(alphas, SAMPLES, 2))
        forget = losses.neggrad(_toy_denoiser, a, _draw(alphas, SAMPLES, 3))
        assert abs(siss.keep.item() / naive.keep.item() - 1) < 0.01, lam
        assert abs(siss.forget.item() / forget.forget.item() - 1) < 0.01, lam


def test_full_data_form_recovers_the_naive_deletion_loss():
    """p_X form: (n/(n−k))·E_{x~p_X}[w_x ℓ_x] − (k/(n−k))·E[w_a ℓ_a] = L_{X\\A} (the mixture identity)."""
    alphas = _late_schedule()
    keep_points, x_keep, a = _pairs(SAMPLES, 4)
    n, k = 6, 1
    g = torch.Generator().manual_seed(5)
    everything = torch.cat([keep_points, a[:1]])
    x_all = everything[torch.randint(0, n, (SAMPLES,), generator=g)]
    noise = _draw(alphas, SAMPLES, 6)
    m = losses.mixture_inputs(x_all, a, noise, 0.5)
    log_w_x, log_w_a = weights.siss_log_weights(weights.log_density_ratio(m, x_all, a, noise.gamma, noise.sigma), 0.5)
    prediction = _toy_denoiser(m, noise.t)
    keep_term = (log_w_x.exp().float() * losses.per_sample_error(prediction, m, x_all, noise)).mean()
    forget_term = (log_w_a.exp().float() * losses.per_sample_error(prediction, m, a, noise)).mean()
    estimate = n / (n - k) * keep_term - k / (n - k) * forget_term
    naive = losses.naive_deletion(_toy_denoiser, x_keep, _draw(alphas, SAMPLES, 7)).keep
    assert abs(estimate.item() / naive.item() - 1) < 0.03


def test_raw_density_ratio_would_be_biased():
    """Guard against the check being toothless: weights without the mixture denominator miss by far."""
    alphas = _late_schedule()
    _, x, a = _pairs(SAMPLES, 8)
    noise = _draw(alphas, SAMPLES, 9)
    m = losses.mixture_inputs(x, a, noise, 0.5)
    prediction = _toy_denoiser(m, noise.t)
    wrong = losses.per_sample_error(prediction, m, x, noise).mean()
    naive = losses.naive_deletion(_toy_denoiser, x, _draw(alphas, SAMPLES, 10)).keep
    assert abs(wrong.item() / naive.item() - 1) > 0.2
