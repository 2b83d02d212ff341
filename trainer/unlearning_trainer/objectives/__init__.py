"""Unlearning objectives: loss terms, importance weights and gradient combination rules."""
