"""Training data: image folders and the seeded, resumable batch samplers over them."""
