"""Trainer for data unlearning in diffusion models (SISS and its baselines).

Importing this package does not import torch: `unlearning_trainer.spec` is shared with the operator.
"""

__version__ = "0.1.0"
