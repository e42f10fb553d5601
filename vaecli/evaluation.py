"""What `vae evaluate` (and `eval.iwae_k` at the end of training) measures, in one place.

The importance-weighted bound and ELBO (bounds.py), the latent diagnostics (latents.py) and
what the numbers mean: split, images, k, likelihood, binarisation, and whether the nats are a
log-likelihood or only a cross-entropy (a Bernoulli decoder on grey-level pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vaecli.bounds import LATENTS_PER_PASS, PerImageBound, ProgressHook, importance_weighted_bound
from vaecli.errors import UsageError
from vaecli.latents import LatentUsage, latent_usage
from vaecli.likelihoods import nats_label
from vaecli.model import VAE

DEFAULT_K = 1000
BOUND_SEED_OFFSET, LATENT_SEED_OFFSET = 0, 1  # separate noise streams: k does not change the I(x; z) draws


def binary_pixels(images: torch.Tensor) -> bool:
    """True when every pixel is exactly 0 or 1: read from the data, not from the config."""
    return bool(((images == 0) | (images == 1)).all())


@dataclass
class Evaluation:
    bound: PerImageBound
    latents: LatentUsage
    meaning: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The content of evaluation.json: what was measured, the bound, the latent figures."""
        return {"setup": self.meaning, "bound": self.bound.summary(), "latents": self.latents.summary()}

    def dimension_rows(self) -> list[dict[str, Any]]:
        return self.latents.rows()


def evaluate_model(
    model: VAE,
    images: torch.Tensor,
    *,
    k: int = DEFAULT_K,
    split: str = "test",
    binarize: str = "none",
    seed: int = 0,
    latents_per_pass: int = LATENTS_PER_PASS,
    mi_batch: int | None = None,
    on_progress: ProgressHook | None = None,
) -> Evaluation:
    """The full evaluation of ``model`` on ``images`` (already binarised as the run's data says).

    Noise comes from CPU generators seeded from ``seed``, so the same call gives the same figures.
    """
    if k < 1:
        raise UsageError(f"k={k}: the number of importance samples must be at least 1")
    was_training = model.training
    model.eval()
    try:
        bound = importance_weighted_bound(
            model,
            images,
            k,
            generator=torch.Generator().manual_seed(seed + BOUND_SEED_OFFSET),
            latents_per_pass=latents_per_pass,
            on_progress=on_progress,
        )
        latents = latent_usage(
            model, images, generator=torch.Generator().manual_seed(seed + LATENT_SEED_OFFSET), mi_batch=mi_batch
        )
    finally:
        model.train(was_training)
    binary = binary_pixels(images)
    meaning = {
        "split": split,
        "images": len(images),
        "k": k,
        "likelihood": model.likelihood,
        "binarize": binarize,
        "binary_pixels": binary,
        "nats_are": nats_label(model.likelihood, binary),
        "seed": seed,
    }
    return Evaluation(bound=bound, latents=latents, meaning=meaning)
