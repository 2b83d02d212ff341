"""Loss terms of every unlearning objective, for one micro-batch.

Each function returns the *keep* and/or *forget* term as scalars (squared error summed over all entries,
averaged over the batch, as in the reference code: the forget-norm constant C keeps its published meaning only
with this reduction). How the two terms' gradients are combined lives in `gradients.py`.

Sampling form: the keep images x are drawn from the retain set p_{X\\A} (Appendix A.1 of the SISS paper, as in
its reference code), not from the full training set p_X. The spec names the retain set directly, the keep term
is then exactly naive deletion with weight 1, and the forget term is a NegGrad push whose size is set by
norm fixing, so the constants n/(n−k) and (1+s)·k/(n−k) of the p_X form are not needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from unlearning_trainer.objectives import weights

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""ε_θ(m, t): predicts the noise in the noisy input m at integer timesteps t (conditioning bound in)."""


@dataclass(frozen=True)
class NoiseDraw:
    """Every random draw of one micro-batch, per sample: timestep t, Gaussian noise ε, the schedule γ_t and σ_t,
    a coin u ~ U[0, 1) (SISS takes the forget component when u < λ) and EraseDiff's uniform target."""

    t: torch.Tensor
    eps: torch.Tensor
    gamma: torch.Tensor
    sigma: torch.Tensor
    coin: torch.Tensor
    uniform: torch.Tensor

    def rows(self, start: int, stop: int) -> NoiseDraw:
        """The draws of samples start..stop−1 (one process's share of a global micro-batch)."""
        return NoiseDraw(*(value[start:stop] for value in self._values()))

    def to(self, device: torch.device | str) -> NoiseDraw:
        return NoiseDraw(*(value.to(device) for value in self._values()))

    def _values(self) -> tuple[torch.Tensor, ...]:
        return (self.t, self.eps, self.gamma, self.sigma, self.coin, self.uniform)

    def noisy(self, clean: torch.Tensor) -> torch.Tensor:
        """m = γ_t y + σ_t ε."""
        return _expand(self.gamma, clean) * clean + _expand(self.sigma, clean) * self.eps


@dataclass(frozen=True)
class Terms:
    """Scalar loss terms of one micro-batch; a missing term is None."""

    keep: torch.Tensor | None = None
    forget: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def draw_noise(
    shape: torch.Size | tuple[int, ...],
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
) -> NoiseDraw:
    """t ~ U{0, …, T−1} (uniform over all timesteps), ε ~ N(0, I); γ_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)."""
    t = torch.randint(0, len(alphas_cumprod), (shape[0],), generator=generator)
    eps = torch.randn(shape, generator=generator)
    coin = torch.rand(shape[0], generator=generator)
    uniform = torch.rand(shape, generator=generator)
    abar = alphas_cumprod[t].double()
    return NoiseDraw(t, eps, abar.sqrt().float(), (1 - abar).sqrt().float(), coin, uniform)


def per_sample_error(prediction: torch.Tensor, m: torch.Tensor, clean: torch.Tensor, noise: NoiseDraw) -> torch.Tensor:
    """ℓ_θ(m, t; y) = ‖ε_θ(m, t) − (m − γ_t y)/σ_t‖², summed over entries; shape (B,)."""
    target = (m - _expand(noise.gamma, m) * clean) / _expand(noise.sigma, m)
    return (prediction.float() - target.float()).flatten(1).pow(2).sum(1)


def naive_deletion(denoise: Denoiser, x: torch.Tensor, noise: NoiseDraw) -> Terms:
    """L_{X\\A}: plain denoising loss on keep images."""
    m = noise.noisy(x)
    keep = per_sample_error(denoise(m, noise.t), m, x, noise).mean()
    return Terms(keep=keep, stats={"loss_keep": keep.item()})


def neggrad(denoise: Denoiser, a: torch.Tensor, noise: NoiseDraw) -> Terms:
    """L_A: denoising loss on forget images (ascended by the combination rule: −c·∇L_A)."""
    m = noise.noisy(a)
    forget = per_sample_error(denoise(m, noise.t), m, a, noise).mean()
    return Terms(forget=forget, stats={"loss_forget": forget.item()})


def erasediff(denoise: Denoiser, denoise_forget: Denoiser, x: torch.Tensor, a: torch.Tensor, noise: NoiseDraw) -> Terms:
    """Keep: L_{X\\A}. Forget: ‖ε_θ(γ_t a + σ_t ε, t) − u‖² with u ~ U[0, 1)^D (EraseDiff, Wu et al. 2024)."""
    m_x, m_a = noise.noisy(x), noise.noisy(a)
    keep = per_sample_error(denoise(m_x, noise.t), m_x, x, noise).mean()
    forget = (denoise_forget(m_a, noise.t).float() - noise.uniform).flatten(1).pow(2).sum(1).mean()
    return Terms(keep=keep, forget=forget, stats={"loss_keep": keep.item(), "loss_forget": forget.item()})


def siss_no_is(
    denoise: Denoiser, denoise_forget: Denoiser, x: torch.Tensor, a: torch.Tensor, noise: NoiseDraw
) -> Terms:
    """Keep: ℓ(γx + σε; x); forget: ℓ(γa + σε; a), same t and ε for the pair; two forward passes."""
    m_x, m_a = noise.noisy(x), noise.noisy(a)
    keep = per_sample_error(denoise(m_x, noise.t), m_x, x, noise).mean()
    forget = per_sample_error(denoise_forget(m_a, noise.t), m_a, a, noise).mean()
    return Terms(keep=keep, forget=forget, stats={"loss_keep": keep.item(), "loss_forget": forget.item()})


def mixture_inputs(x: torch.Tensor, a: torch.Tensor, noise: NoiseDraw, lam: float) -> torch.Tensor:
    """One noisy input per pair from q_λ: m = γ_t (b ? a : x) + σ_t ε with b = [u < λ] ~ Bernoulli(λ)."""
    from_forget = (noise.coin < lam).view(-1, *([1] * (x.dim() - 1)))
    source = torch.where(from_forget, a, x)
    return noise.noisy(source)


def siss(
    denoise: Denoiser,
    x: torch.Tensor,
    a: torch.Tensor,
    noise: NoiseDraw,
    lam: float,
) -> Terms:
    """Keep: E[w_x(m) ℓ(m, t; x)]; forget: E[w_a(m) ℓ(m, t; a)], both from ONE forward pass on m ~ q_λ.

    A text-conditioned `denoise` conditions each pair on the keep caption: like the paper's Stable Diffusion
    runs, SISS assumes a pair shares its prompt, since the weights only account for the density of m.
    """
    m = mixture_inputs(x, a, noise, lam)
    log_w_x, log_w_a = weights.siss_log_weights(weights.log_density_ratio(m, x, a, noise.gamma, noise.sigma), lam)
    w_x, w_a = log_w_x.exp().float(), log_w_a.exp().float()
    prediction = denoise(m, noise.t)
    keep = (w_x * per_sample_error(prediction, m, x, noise)).mean()
    forget = (w_a * per_sample_error(prediction, m, a, noise)).mean()
    stats = {"loss_keep": keep.item(), "loss_forget": forget.item()}
    stats |= weights.weight_stats(log_w_x, "weight_keep") | weights.weight_stats(log_w_a, "weight_forget")
    return Terms(keep=keep, forget=forget, stats=stats)


def redirected_target(
    m: torch.Tensor, neighbours: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """v̄ = Σ_j p_j (m − γ_t n_j)/σ_t with p = softmax_j(−‖m − γ_t n_j‖²/(2σ_t²)); returns v̄ and p (B, k).

    `neighbours` is (B, k, *m.shape[1:]). The logits are computed in float64 one neighbour at a time: at small t
    they are differences of numbers near 1e6, and a (B, k, D) intermediate would not fit at Stable Diffusion size.
    """
    flat_m = m.flatten(1)
    flat_n = neighbours.flatten(2)
    g, s = gamma.double()[:, None], sigma.double()
    squared = [(flat_m.double() - g * flat_n[:, j].double()).pow(2).sum(1) for j in range(flat_n.shape[1])]
    weights = torch.softmax(-torch.stack(squared, 1) / (2 * s.pow(2))[:, None], dim=1)
    mean_neighbour = torch.einsum("bk,bkd->bd", weights.to(flat_n.dtype), flat_n)
    target = (flat_m - gamma[:, None].to(m.dtype) * mean_neighbour) / sigma[:, None].to(m.dtype)
    return target.view_as(m), weights.float()


def retrack(
    denoise: Denoiser,
    denoise_forget: Denoiser,
    x: torch.Tensor,
    a: torch.Tensor,
    neighbours: torch.Tensor,
    noise: NoiseDraw,
) -> Terms:
    """Keep: ℓ(γx + σε; x). Forget: ‖ε_θ(m, t) − v̄‖² at m = γa + σε (ReTrack, Shi et al. 2026).

    v̄ is `redirected_target` over a's k nearest retain images. The paper's term Σ_j p_j ‖ε_θ − v_j‖² equals
    ‖ε_θ − v̄‖² plus Σ_j p_j ‖v_j − v̄‖², which does not depend on θ: same gradient, and the logged loss_forget
    is the distance to where the retrained model would denoise. The pair shares t and ε, as in siss-no-is.
    """
    m_x, m_a = noise.noisy(x), noise.noisy(a)
    keep = per_sample_error(denoise(m_x, noise.t), m_x, x, noise).mean()
    target, weights = redirected_target(m_a, neighbours, noise.gamma, noise.sigma)
    forget = (denoise_forget(m_a, noise.t).float() - target.float()).flatten(1).pow(2).sum(1).mean()
    stats = {
        "loss_keep": keep.item(),
        "loss_forget": forget.item(),
        "neighbour_weight_max": weights.max(1)[0].mean().item(),
    }
    return Terms(keep=keep, forget=forget, stats=stats)
