"""The U-Net's output read as the noise ε, whatever the scheduler says the model predicts.

Every objective and metric here is written in ε-space (SISS subtracts and reweights noise-prediction errors). A
v-prediction model (Stable Diffusion 2.x 768-v) or a sample-prediction model gives the same information in
another parameterisation, converted exactly at the noisy input x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearning_trainer.errors import DataError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler_config: Any) -> str:
    """The scheduler's `prediction_type` (diffusers' default: epsilon), refused unless it converts to ε."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise DataError(
            f"spec.model.uri: the scheduler's prediction_type is {prediction!r}, which the trainer cannot read as "
            f"noise. Fix: use a model that predicts one of {', '.join(PREDICTION_TYPES)}."
        )
    return prediction


def to_epsilon(
    output: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, prediction: str
) -> torch.Tensor:
    """ε̂ = output (ε); √ᾱ_t·v̂ + √(1−ᾱ_t)·x_t (v); (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t) (sample)."""
    if prediction == "epsilon":
        return output
    output, noisy = output.float(), noisy.float()
    shape = (-1,) + (1,) * (output.dim() - 1)
    alpha = alphas_cumprod.to(output.device)[t.to(output.device)].float().reshape(shape)
    if prediction == "v_prediction":
        return alpha.sqrt() * output + (1 - alpha).sqrt() * noisy
    return (noisy - alpha.sqrt() * output) / (1 - alpha).sqrt()
