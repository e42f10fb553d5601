"""How a VAE uses its latent space: KL per dimension, active units, collapse, and I(x; z) under q.

- KL per dimension: the mean over images of KL(q(z_u|x) || N(0, 1)), in nats.
- Active units (Burda et al. 2016): dimension u is active when Cov_x(E_q[z_u|x]) > 0.01, i.e. its
  posterior mean moves with the image; an inactive one tells the decoder nothing.
- Collapsed onto the prior: mean KL below a small threshold, so q(z_u|x) is N(0, 1) for every x.
- Mutual information I(x; z) under q, as He et al. (2019) estimate it: E_x E_q(z|x)[log q(z|x)]
  minus E_q(z)[log q(z)], with one z per image and the aggregate posterior q(z) taken as the mixture
  of the q(z|x) of the images in a batch. The estimate cannot exceed log(batch size); He et al.
  average it over test batches, ``mi_batch=None`` uses all evaluated images as one mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Normal

from vaecli.errors import UsageError
from vaecli.model import VAE
from vaecli.objective import kl_to_standard_normal

ACTIVE_THRESHOLD = 0.01  # Burda et al.'s criterion on Cov_x(E_q[z_u|x])
COLLAPSE_THRESHOLD = 0.01  # nats of mean KL below which a dimension counts as collapsed onto the prior
ENCODE_CHUNK = 5000
MIXTURE_CHUNK = 256  # latents scored against the whole mixture at once (chunk x images float64)
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class LatentUsage:
    """Per-dimension figures (index order) and the whole-space ones; tensors float64 on the CPU."""

    kl_per_dim: torch.Tensor  # nats
    mean_variance: torch.Tensor  # Cov_x(E_q[z_u|x]), the variance over images of each posterior mean
    active: torch.Tensor  # bool
    collapsed: torch.Tensor  # bool
    mutual_information: float  # nats
    mixture_size: int  # images per mixture in the I(x; z) estimate, whose ceiling is log(mixture_size)

    @property
    def active_units(self) -> int:
        return int(self.active.sum())

    def summary(self) -> dict[str, float | int]:
        return {
            "latent_size": len(self.kl_per_dim),
            "active_units": self.active_units,
            "collapsed_dims": int(self.collapsed.sum()),
            "kl_nats": float(self.kl_per_dim.sum()),
            "mutual_information_nats": self.mutual_information,
            "mutual_information_max_nats": math.log(self.mixture_size),
        }

    def rows(self) -> list[dict[str, float | int | bool]]:
        """One row per latent dimension, for a CSV beside evaluation.json."""
        return [
            {
                "dim": dim,
                "kl_nats": float(self.kl_per_dim[dim]),
                "posterior_mean_variance": float(self.mean_variance[dim]),
                "active": bool(self.active[dim]),
                "collapsed": bool(self.collapsed[dim]),
            }
            for dim in range(len(self.kl_per_dim))
        ]


@torch.inference_mode()
def posterior_parameters(
    model: VAE, images: torch.Tensor, chunk: int = ENCODE_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """loc and scale of q(z|x) for every image, float64 on the CPU (n x latent_size each)."""
    device = model.decoder.head.weight.device
    locs, scales = [], []
    for part in images.split(chunk):
        q = model.encoder(part.to(device))
        locs.append(q.loc.double().cpu())
        scales.append(q.scale.double().cpu())
    return torch.cat(locs), torch.cat(scales)


def mixture_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log (1/n) sum_j N(z_i; loc_j, diag scale_j^2) for each row z_i, scored in chunks of rows.

    The squared distances come from three matrix products (no chunk x n x d tensor); float64 keeps
    their cancellation harmless even at the smallest posterior scales.
    """
    precision = scale.square().reciprocal()
    weighted_loc = loc * precision
    constant = (loc * weighted_loc).sum(-1) + 2 * scale.log().sum(-1) + loc.shape[-1] * _LOG_2PI
    parts = []
    for rows in z.split(MIXTURE_CHUNK):
        squared = rows.square() @ precision.T - 2 * rows @ weighted_loc.T
        parts.append(torch.logsumexp(-0.5 * (squared + constant), dim=1))
    return torch.cat(parts) - math.log(len(loc))


def mutual_information(
    loc: torch.Tensor, scale: torch.Tensor, generator: torch.Generator | None = None, batch: int | None = None
) -> float:
    """He et al.'s estimate of I(x; z) under q, in nats, from posterior parameters (n x d, float64).

    One z_i ~ q(z|x_i) per image; q(z) is the mixture of the batch's q(z|x_j) (``batch=None``: all
    images). Batch estimates are averaged, weighted by their sizes.
    """
    loc, scale = loc.double(), scale.double()
    noise = torch.randn(loc.shape, generator=generator, dtype=torch.float64)
    z = loc + scale * noise
    neg_entropy = -(0.5 * (_LOG_2PI + 1) * loc.shape[-1] + scale.log().sum(-1))  # E_q[log q(z|x)], per image
    size = len(loc) if batch is None else batch
    total = 0.0
    for start in range(0, len(loc), size):
        part = slice(start, start + size)
        log_qz = mixture_log_density(z[part], loc[part], scale[part])
        total += float((neg_entropy[part] - log_qz).sum())
    return total / len(loc)


def latent_usage(
    model: VAE,
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    mi_batch: int | None = None,
    active_threshold: float = ACTIVE_THRESHOLD,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
) -> LatentUsage:
    """KL per dimension, active units, collapsed dimensions and I(x; z) over ``images``."""
    if len(images) < 2:
        raise UsageError("latent diagnostics need at least 2 images (a variance over images)")
    if mi_batch is not None and mi_batch < 1:
        raise UsageError(f"mi_batch={mi_batch} must be at least 1 (or None for all images)")
    loc, scale = posterior_parameters(model, images)
    kl_per_dim = kl_to_standard_normal(Normal(loc, scale, validate_args=False)).mean(0)
    mean_variance = loc.var(0)
    return LatentUsage(
        kl_per_dim=kl_per_dim,
        mean_variance=mean_variance,
        active=mean_variance > active_threshold,
        collapsed=kl_per_dim < collapse_threshold,
        mutual_information=mutual_information(loc, scale, generator, mi_batch),
        mixture_size=min(len(images), mi_batch or len(images)),
    )
