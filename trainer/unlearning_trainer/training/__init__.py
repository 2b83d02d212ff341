"""The training loop, its optimizer step and its checkpoints."""
