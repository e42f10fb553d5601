"""vaecli's batched launcher: `vae sweep ... hydra/launcher=batched` (see batched_launcher.py)."""
