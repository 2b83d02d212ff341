"""Experiment tracking behind a small interface; the training loop never imports a tracking backend."""
