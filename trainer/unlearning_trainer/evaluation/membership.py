"""Membership-inference evidence: can an attacker with the weights tell a forget image from images never trained on?

Two white-box attacks give every image a score, lower meaning "more like a training image":
- loss: the mean noise-prediction error ‖ε_θ(γ_t x + σ_t ε, t) − ε‖² / D at fixed timesteps and fixed noise
  (the loss attack of Matsumoto et al., 2023);
- SimA: ‖ε_θ(x, t)‖ with the clean image itself as the input, one query at a small t (Rao, Qu and Moyer, 2025:
  the predicted noise points from x towards a kernel-weighted mean of nearby training images, so it is short at
  a training image).

Members are the evaluation's fixed retain subset, non-members `data.holdout`. Each attack reports its AUC
(members against non-members: 0.5 means it cannot tell them apart) and, for the forget images, their score's
percentile among the non-members: near 0 a forget image still looks like a training image, and an unlearned one
scores like a non-member, as it would under a model retrained without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearning_trainer.data.images import ImageSet
from unlearning_trainer.data.sampling import generator_for
from unlearning_trainer.errors import SpecError
from unlearning_trainer.models.adapter import DiffusionAdapter
from unlearning_trainer.spec import MembershipSpec

ATTACKS = ("loss", "sima")
CHUNK = 256
NOISE_KEYS = {"members": 10, "holdout": 11, "forget": 12}
"""Evaluation-seed streams of the loss attack's fixed noise, apart from the evaluator's own keys."""


def auc(members: torch.Tensor, non_members: torch.Tensor) -> float:
    """P(s_member < s_non-member) + ½·P(tie): the Mann–Whitney AUC of telling members by their lower score."""
    below = (members[:, None] < non_members[None, :]).double().mean()
    ties = (members[:, None] == non_members[None, :]).double().mean()
    return float(below + 0.5 * ties)


def percentile(score: float, non_members: torch.Tensor) -> float:
    """100·(share of non-members scoring below `score` + ½·share tied): 0 = more member-like than every one."""
    below = (non_members < score).double().mean()
    ties = (non_members == score).double().mean()
    return float(100 * (below + 0.5 * ties))


@dataclass(frozen=True)
class MembershipResult:
    metrics: dict[str, float]
    """mia_<attack>_auc, mia_<attack>_forget_percentile (the lowest) and _mean."""
    forget_percentiles: dict[str, list[float]]
    """Each forget image's percentile per attack, in the forget set's order (for the audit record)."""


class MembershipAttacks:
    """Scores fixed sets of members, non-members and forget images the same way at every evaluation."""

    def __init__(
        self,
        adapter: DiffusionAdapter,
        spec: MembershipSpec,
        *,
        seed: int,
        device: torch.device,
        members: tuple[torch.Tensor, list[str] | None],
        holdout: ImageSet,
        forget: ImageSet,
    ) -> None:
        total = len(adapter.alphas_cumprod)
        too_late = [t for t in [*spec.loss_timesteps, spec.sima_timestep] if t >= total]
        if too_late:
            raise SpecError(
                f"spec.evaluation.membership: timestep {too_late[0]} is not below the scheduler's {total} training "
                f"timesteps. Fix: use lossTimesteps and simaTimestep below {total}."
            )
        self.adapter = adapter
        self.spec = spec
        self.seed = seed
        self.device = device
        self.sets = {
            "members": members,
            "holdout": holdout.take(torch.arange(len(holdout))),
            "forget": forget.take(torch.arange(len(forget))),
        }
        self.forget_names = list(forget.names)

    @torch.no_grad()
    def scores(self, unet: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
        """Every attack's score of each image of the set `name`, shape (N,) each."""
        images, captions = self.sets[name]
        timesteps = torch.tensor(self.spec.loss_timesteps)
        generator = generator_for(self.seed, NOISE_KEYS[name])
        loss, sima = [], []
        for start in range(0, len(images), CHUNK):
            clean = self.adapter.to_diffusion_space(images[start : start + CHUNK].to(self.device))
            denoise = self.adapter.denoiser(unet, None if captions is None else captions[start : start + CHUNK])
            errors = torch.zeros(len(clean), device=self.device)
            for t in timesteps:
                eps = torch.randn(clean.shape, generator=generator).to(self.device)
                abar = self.adapter.alphas_cumprod[t].double()
                noisy = abar.sqrt().float() * clean + (1 - abar).sqrt().float() * eps
                at = t.repeat(len(clean)).to(self.device)
                errors += (denoise(noisy, at).float() - eps).flatten(1).pow(2).mean(1)
            loss.append((errors / len(timesteps)).cpu())
            at = torch.full((len(clean),), self.spec.sima_timestep, device=self.device)
            sima.append(denoise(clean, at).float().flatten(1).norm(dim=1).cpu())
        return {"loss": torch.cat(loss), "sima": torch.cat(sima)}

    def __call__(self, unet: torch.nn.Module) -> MembershipResult:
        """mia_<attack>_auc, and the lowest and the mean forget percentile among non-members, per attack."""
        members, holdout, forget = (self.scores(unet, name) for name in ("members", "holdout", "forget"))
        metrics, per_image = {}, {}
        for attack in ATTACKS:
            percentiles = [percentile(float(score), holdout[attack]) for score in forget[attack]]
            per_image[attack] = percentiles
            metrics[f"mia_{attack}_auc"] = auc(members[attack], holdout[attack])
            metrics[f"mia_{attack}_forget_percentile"] = min(percentiles)
            metrics[f"mia_{attack}_forget_percentile_mean"] = sum(percentiles) / len(percentiles)
        return MembershipResult(metrics, per_image)
