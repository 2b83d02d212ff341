"""Settings that are valid but probably not what the user meant: a warning with the reason for each, shown by
`unlearn validate` and `unlearn run` and posted as a Warning Event by the operator. Pure, no torch."""

from __future__ import annotations

from unlearning_trainer.spec import UnlearningJobSpec

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
