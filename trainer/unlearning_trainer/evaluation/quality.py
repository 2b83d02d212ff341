"""Sample quality with no download: a small domain classifier shipped as safetensors.

The classifier is a one-hidden-layer MLP, p(y|x) = softmax(W₂ relu(W₁x + b₁) + b₂), on images flattened to
[0, 1] pixels. Its hidden layer gives the features for a Fréchet distance against reference statistics stored
in the same file (`reference_mean`, `reference_cov`), as Inception features do for FID.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import linalg

KEYS = ("hidden.weight", "hidden.bias", "output.weight", "output.bias", "reference_mean", "reference_cov")


class DomainClassifier:
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [key for key in KEYS if key not in tensors]
        if missing:
            raise ValueError(f"classifier file lacks {', '.join(missing)}")
        self.tensors = {key: tensors[key].double() for key in KEYS}

    @classmethod
    def load(cls, path: Path) -> DomainClassifier:
        return cls(load_file(path))

    def save(self, path: Path) -> None:
        save_file({key: value.float().contiguous() for key, value in self.tensors.items()}, path)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Hidden activations relu(W₁x + b₁) of images (N, C, H, W) in [0, 1]."""
        x = images.flatten(1).double()
        return torch.relu(x @ self.tensors["hidden.weight"].T + self.tensors["hidden.bias"])

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.features(images) @ self.tensors["output.weight"].T + self.tensors["output.bias"]
        return torch.softmax(logits, dim=1)


def inception_score(probabilities: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) with p(y) the mean prediction."""
    p = probabilities.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return math.exp((p * (p.log() - marginal.log())).sum(1).mean().item())


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased) of feature rows."""
    features = features.double()
    return features.mean(0), torch.from_numpy(np.cov(features.numpy(), rowvar=False))


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)."""
    covmean, _ = linalg.sqrtm(cov1.numpy() @ cov2.numpy(), disp=False)
    covmean = np.real(covmean)
    diff = (mean1 - mean2).numpy()
    return float(diff @ diff + np.trace(cov1.numpy()) + np.trace(cov2.numpy()) - 2 * np.trace(covmean))


def frechet_to_reference(classifier: DomainClassifier, samples: torch.Tensor) -> float:
    """Fréchet distance of `samples` in [0, 1] to the classifier's reference statistics (NaN below 2 samples)."""
    if len(samples) < 2:
        return float("nan")
    mean, cov = feature_statistics(classifier.features(samples))
    return frechet_distance(mean, cov, classifier.tensors["reference_mean"], classifier.tensors["reference_cov"])


def quality_metrics(classifier: DomainClassifier, samples: torch.Tensor) -> dict[str, float]:
    """Inception-style score, Fréchet distance to the reference and mean confidence of `samples` in [0, 1]."""
    if len(samples) < 2:
        return {"quality_is": float("nan"), "quality_fd": float("nan"), "quality_confidence": float("nan")}
    probabilities = classifier.probabilities(samples)
    return {
        "quality_is": inception_score(probabilities),
        "quality_fd": frechet_to_reference(classifier, samples),
        "quality_confidence": probabilities.max(1).values.mean().item(),
    }
