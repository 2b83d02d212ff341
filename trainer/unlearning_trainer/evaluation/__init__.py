"""Deterministic evaluation: denoising losses, likelihood, memorization and sample grids."""
