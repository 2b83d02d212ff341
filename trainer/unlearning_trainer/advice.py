"""Settings that are valid but probably not what the user meant: a warning with the reason for each, shown by
`unlearn validate` and `unlearn run` and posted as a Warning Event by the operator; and, once the data has been
read, what it says about the spec. Pure, no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearning_trainer.spec import UnlearningJobSpec

if TYPE_CHECKING:
    from unlearning_trainer.data.exclusion import Census

LAMBDA_0 = (
    "spec.method.lambda is 0: SISS draws every noisy input around a kept image, so the forget term's importance "
    "weights are almost always near 0 and fixing its gradient norm blows a tiny gradient up (the paper reports "
    "this unstable on Stable Diffusion); 0.5 is the recommended value"
)
LAMBDA_1 = (
    "spec.method.lambda is 1: SISS draws every noisy input around a forgotten image, so the keep term's "
    "importance weights are near 0 and the method degenerates to NegGrad, which costs quality; 0.5 is the "
    "recommended value"
)


def spec_warnings(spec: UnlearningJobSpec) -> list[str]:
    """One line per valid-but-suspect setting, empty when there is none."""
    warnings = []
    if spec.method.name == "siss" and spec.method.lambda_ == 0.0:
        warnings.append(LAMBDA_0)
    if spec.method.name == "siss" and spec.method.lambda_ == 1.0:
        warnings.append(LAMBDA_1)
    return warnings


def data_warnings(
    spec: UnlearningJobSpec, census: Census, *, forget_unique: int, excluding: bool, values: int
) -> list[str]:
    """What the pass over the retained data found that the user should look at (images of `values` pixel
    values)."""
    warnings = []
    if excluding and census.forget_found < forget_unique:
        warnings.append(
            f"{forget_unique - census.forget_found} of the {forget_unique} distinct forget images have no copy in "
            "spec.data.train.uri: check that it is the model's training set; if the copies there were re-encoded "
            "lossily or edited, set spec.data.nearDuplicateDistance (e.g. 0.02) to find them"
        )
    if not excluding and census.exact_copies + census.near_duplicates:
        warnings.append(
            f"spec.data.retain.uri holds {census.exact_copies} copies of forget images, which the method will both "
            "keep and forget; remove them, or name the training set as spec.data.train and the trainer leaves "
            "them out"
        )
    threshold = spec.evaluation.l2_threshold(values)
    if census.nearest_distance is not None and threshold >= census.nearest_distance:
        warnings.append(
            f"spec.evaluation.memorizationThreshold ({threshold:.3g}) is not below the distance from the nearest kept "
            f"image to a forget image ({census.nearest_distance:.3g}), so ordinary samples can count as memorized "
            f"copies; choose a threshold below {census.nearest_distance:.3g} (half of it is a safe start)"
        )
    return warnings
