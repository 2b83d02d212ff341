"""Negative log-likelihood of images under a DDPM, in bits per dimension.

Two estimators:
- `vlb_nll`: the discrete variational bound of Ho et al. (2020), L_T + Σ_{t≥1} L_{t−1} + L_0, with the
  decoder integrated over 8-bit bins (pixels) or taken as a density (latents). It is an upper bound on the
  NLL. With `terms` < T − 1 the middle sum is estimated without bias: the first terms/2 timesteps (where the
  bound's mass concentrates) exactly, the rest by stratified sampling, one random timestep per equal-width
  stratum weighted by the stratum's width.
- `pf_ode_nll`: the exact likelihood of the probability-flow ODE (Song et al. 2021), as in the SISS paper:
  VP-SDE with the continuous form of the linear schedule, Hutchinson divergence, RK45, +7 bits for the 8-bit
  dequantization.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

from unlearning_trainer.evaluation import metrics
from unlearning_trainer.objectives.losses import Denoiser

CHUNK = 250


def is_linear(betas: torch.Tensor) -> bool:
    """Whether β_t = β_1 + (t − 1)(β_T − β_1)/(T − 1): the only schedule `pf_ode_nll` models."""
    line = torch.linspace(float(betas[0]), float(betas[-1]), len(betas), dtype=torch.float64)
    return bool(torch.allclose(betas.double(), line, rtol=1e-4, atol=1e-9))


def vlb_timesteps(num_timesteps: int, terms: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps in 1..T−1 for the middle terms of the bound and their weights (Σ weight·L_t estimates Σ L_t)."""
    if terms >= num_timesteps - 1:
        timesteps = torch.arange(1, num_timesteps)
        return timesteps, torch.ones(len(timesteps), dtype=torch.float64)
    exact = max(1, terms // 2)
    strata = torch.linspace(1 + exact, num_timesteps, terms - exact + 1).round().long()
    low, high = strata[:-1], strata[1:]
    offsets = (torch.rand(len(low), generator=generator, dtype=torch.float64) * (high - low)).long()
    timesteps = torch.cat([torch.arange(1, 1 + exact), low + offsets])
    weights = torch.cat([torch.ones(exact, dtype=torch.float64), (high - low).double()])
    return timesteps, weights


@torch.no_grad()
def vlb_nll(
    denoise: Denoiser,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    betas: torch.Tensor,
    *,
    terms: int,
    generator: torch.Generator,
    variance: str = "fixed_small",
    discrete: bool = True,
) -> torch.Tensor:
    """Variational bound on −log p(x0) in nats for one image x0 (C, H, W): 8-bit data in [−1, 1] (`discrete`),
    or continuous data such as VAE latents, whose decoder term is then a Gaussian density, not a bin mass."""
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    posterior_var = betas * (1 - abar_prev) / (1 - abar)
    model_var = posterior_var.clone() if variance.startswith("fixed_small") else betas.clone()
    model_var[0] = posterior_var[1]
    x0 = x0.double()
    total_steps = len(abar)

    prior = metrics.normal_kl(
        abar[-1].sqrt() * x0, (1 - abar[-1]).log().expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0)
    )
    nll = prior.sum()

    middle, weights = vlb_timesteps(total_steps, terms, generator)
    chunks = [(torch.tensor([0]), None), *zip(middle.split(CHUNK), weights.split(CHUNK), strict=True)]
    for t_chunk, weight in chunks:
        count = len(t_chunk)
        x = x0.expand(count, *x0.shape)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        a, a_prev = abar[t_chunk].view(-1, 1, 1, 1), abar_prev[t_chunk].view(-1, 1, 1, 1)
        beta = betas[t_chunk].view(-1, 1, 1, 1).double()
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        eps_hat = denoise(x_t.float(), t_chunk).double()
        x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
        coef_x0, coef_xt = beta * a_prev.sqrt() / (1 - a), (1 - a_prev) * (1 - beta).sqrt() / (1 - a)
        mean_model = coef_x0 * x0_hat + coef_xt * x_t
        logvar_model = model_var[t_chunk].log().view(-1, 1, 1, 1).expand_as(x)
        if weight is None:
            log_likelihood = (
                metrics.discretized_gaussian_log_likelihood if discrete else metrics.gaussian_log_likelihood
            )
            decoder = log_likelihood(x, mean_model, 0.5 * logvar_model)
            nll = nll - decoder.sum()
            continue
        mean_true = coef_x0 * x + coef_xt * x_t
        logvar_true = posterior_var[t_chunk].log().view(-1, 1, 1, 1).expand_as(x)
        kl = metrics.normal_kl(mean_true, logvar_true, mean_model, logvar_model)
        nll = nll + (weight * kl.flatten(1).sum(1)).sum()
    return nll.float()


def pf_ode_nll(
    denoise: Denoiser,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    beta_min: float,
    beta_max: float,
    generator: torch.Generator,
    tolerance: float = 1e-5,
    draws: int = 1,
) -> torch.Tensor:
    """−log p(x0) in nats for one image by the probability-flow ODE, averaged over `draws` Hutchinson vectors.

    dx/dt = f̃(x, t) = −½β(t)x − ½β(t)·s(x, t) with s(x, t) = −ε_θ(x, ⌊999t⌋)/σ_t and σ_t from the discrete
    table; log p0(x) = log N(x(1); 0, I) + ∫ ∇·f̃ dt from t = 1e-5 to 1.
    """
    shape, dims = x0.shape, x0.numel()
    abar = alphas_cumprod.double()
    results = []
    for _ in range(draws):
        z = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).float()

        def dynamics(t: float, state: np.ndarray, z: torch.Tensor = z) -> np.ndarray:
            x = torch.from_numpy(state[:-1]).float().view(1, *shape).requires_grad_(True)
            index = min(int(999 * t), len(abar) - 1)
            sigma = float((1 - abar[index]).sqrt())
            beta = beta_min + t * (beta_max - beta_min)
            with torch.enable_grad():
                eps = denoise(x, torch.tensor([index]))
                drift = -0.5 * beta * (x - eps / sigma)
                (vjp,) = torch.autograd.grad((drift * z).sum(), x)
            divergence = (vjp * z).sum().item()
            return np.concatenate([drift.detach().double().flatten().numpy(), [divergence]])

        start = np.concatenate([x0.double().flatten().numpy(), [0.0]])
        solution = solve_ivp(dynamics, (1e-5, 1.0), start, method="RK45", rtol=tolerance, atol=tolerance)
        x1, integral = solution.y[:-1, -1], solution.y[-1, -1]
        prior = -0.5 * dims * math.log(2 * math.pi) - 0.5 * float(np.sum(x1**2))
        results.append(-(prior + integral) + 7 * dims * math.log(2.0))
    return torch.tensor(float(np.mean(results)))
