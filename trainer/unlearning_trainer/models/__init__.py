"""Model adapters: one interface over pixel-space and latent text-conditioned diffusers pipelines."""
