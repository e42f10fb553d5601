"""The beta-weighted ELBO, in the seed's per-dimension units and in nats per image.

The seed averages over pixels and latent dimensions, so its beta means
``beta_sum = beta * 784 / latent_size`` under the usual per-image sums. Both scales are
reported so runs compare with the seed and with the literature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Normal


def bernoulli_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Elementwise sigmoid cross-entropy, -log p(x|logits), for targets in [0, 1].

    The same value as ``F.binary_cross_entropy_with_logits(reduction='none')``; written as
    relu(l) - x*l + log(1 + exp(-|l|)) because torch's kernel spends most of its time in log1p.
    """
    return logits.clamp_min(0) - targets * logits + torch.log(1 + torch.exp(-logits.abs()))


def kl_to_standard_normal(q: Normal) -> torch.Tensor:
    """Elementwise closed-form KL(q || N(0, 1)) for a factorized Normal q."""
    variance = q.scale.square()
    return 0.5 * (variance + q.loc.square() - 1) - q.scale.log()


@dataclass
class Terms:
    """Batch means of the ELBO terms; ``loss`` carries the graph for backward()."""

    loss: torch.Tensor
    reconstruction: torch.Tensor  # mean over batch and pixels (the seed's units)
    kl: torch.Tensor  # mean over batch and latent dims (the seed's units)
    recon_nats: torch.Tensor  # per image, summed over pixels
    kl_nats: torch.Tensor  # per image, summed over latent dims

    @property
    def neg_elbo_nats(self) -> torch.Tensor:
        return self.recon_nats + self.kl_nats


def elbo_terms(q: Normal, logits: torch.Tensor, x: torch.Tensor, beta: float) -> Terms:
    recon_nats = bernoulli_nll(logits, x).sum(-1).mean()
    kl_nats = kl_to_standard_normal(q).sum(-1).mean()
    reconstruction = recon_nats / x.shape[-1]
    kl = kl_nats / q.loc.shape[-1]
    return Terms(reconstruction + beta * kl, reconstruction, kl, recon_nats, kl_nats)
