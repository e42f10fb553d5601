"""What to decode for each picture (latent grids, lines and draws) and how a VAE uses its latent space.

- KL per dimension: the mean over images of KL(q(z_u|x) || N(0, 1)), in nats.
- Active units (Burda et al. 2016): dimension u is active when Cov_x(E_q[z_u|x]) > 0.01, i.e. its
  posterior mean moves with the image; an inactive one tells the decoder nothing.
- Collapsed onto the prior: mean KL below a small threshold, so q(z_u|x) is N(0, 1) for every x.
- Mutual information I(x; z) under q, as He et al. (2019) estimate it: E_x E_q(z|x)[log q(z|x)]
  minus E_q(z)[log q(z)], with one z per image and the aggregate posterior q(z) taken as the mixture
  of the q(z|x) of the images in a batch. The estimate cannot exceed log(batch size); He et al.
  average it over test batches, ``mi_batch=None`` uses all evaluated images as one mixture.

Pure tensor code: drawing lives in ``images`` and ``plots``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Normal

from vaecli.errors import UsageError
from vaecli.models.encoding import posterior
from vaecli.models.mlp import VAE
from vaecli.objectives.beta import kl_to_standard_normal

RUN_ORIGINALS = 8  # test images a run shows over their reconstructions
TRAVERSAL_STEPS = 10  # the seed's 10 x 10 traversal
ACTIVE_THRESHOLD = 0.01  # Burda et al.'s criterion on Cov_x(E_q[z_u|x])
COLLAPSE_THRESHOLD = 0.01  # nats of mean KL below which a dimension counts as collapsed onto the prior
MIXTURE_CHUNK = 256  # latents scored against the whole mixture at once (chunk x images float64)
_LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def traversal_grid(
    model: VAE,
    dims: tuple[int, int] = (0, 1),
    low: float = -1.0,
    high: float = 1.0,
    steps: int = TRAVERSAL_STEPS,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoder means over a steps x steps grid of two latent dims, the rest at ``center`` (0).

    Rows follow dims[0] from low to high, columns dims[1]; this is what the seed meant with
    its ``sqrt_num_samples**2`` grid.
    """
    values = torch.linspace(low, high, steps)
    base = torch.zeros(model.latent_size) if center is None else center.detach().cpu().reshape(-1)
    z = base.repeat(steps * steps, 1)
    if model.latent_size == 1:
        z = base.repeat(steps, 1)
        z[:, 0] = values
    else:
        rows, cols = torch.meshgrid(values, values, indexing="ij")
        z[:, dims[0]] = rows.reshape(-1)
        z[:, dims[1]] = cols.reshape(-1)
    return decode(model, z)


def model_device(model: VAE) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoder means for CPU latents ``z``, returned on the CPU.

    The mean of p(x|z): the pixel probabilities of a Bernoulli; for a continuous Bernoulli it differs
    from its parameter (pulled towards 1/2), so ``.mean``, never ``.probs``.
    """
    return model.decoder(z.to(model_device(model))).mean.cpu()


def posterior_parameters(model: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """loc and scale of q(z|x) for every image, float64 on the CPU (n x latent_size each)."""
    loc, scale = posterior(model.encoder, images, model_device(model))
    return loc.double(), scale.double()


def posterior_means(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Means of q(z|x) for each image, float32 on the CPU."""
    return posterior_parameters(model, images)[0].float()


@torch.no_grad()
def reconstructions(
    model: VAE, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Decoder means at the posterior mean, or at one draw from q when ``sample``.

    The noise comes from a CPU generator, so a seed gives the same picture on any device.
    """
    q = model.encoder(images.to(model_device(model)))
    z = q.loc.cpu()
    if sample:
        z = z + q.scale.cpu() * torch.randn(z.shape, generator=generator)
    return decode(model, z)


@torch.no_grad()
def prior_draws(model: VAE, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoder means for ``count`` latents drawn from the prior N(0, I)."""
    return decode(model, torch.randn(count, model.latent_size, generator=generator))


def kl_per_dimension(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Mean over ``images`` of KL(q(z_i|x) || N(0, 1)) for each latent dim i, in nats (float32).

    Dimensions the model ignores sit near 0 (q equals the prior there); the ones it uses
    carry the information, so this is the order in which to look at them.
    """
    loc, scale = posterior_parameters(model, images)
    return kl_to_standard_normal(Normal(loc, scale, validate_args=False)).mean(0).float()


@torch.no_grad()
def dimension_sweeps(
    model: VAE, dims: list[int], values: torch.Tensor, center: torch.Tensor | None = None
) -> torch.Tensor:
    """One row per entry of ``dims``: that dim alone takes ``values``, the rest stay at ``center``."""
    base = torch.zeros(model.latent_size) if center is None else center.detach().cpu().reshape(-1)
    z = base.repeat(len(dims) * len(values), 1)
    for row, dim in enumerate(dims):
        z[row * len(values) : (row + 1) * len(values), dim] = values
    return decode(model, z)


def prior_quantiles(steps: int, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """Evenly spaced quantiles of N(0, 1): equal prior mass between neighbouring tiles."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(low, high, steps))


@torch.no_grad()
def latent_map(model: VAE, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D latent map: decoder means over a steps x steps grid of prior quantiles.

    Columns follow z0 from low to high and rows follow z1 from high (top) to low, so the
    picture lines up with a scatter of posterior means (z0 on x, z1 on y), as ``vae embed`` draws.
    Returns the images, the z0 value of each column and the z1 value of each row.
    """
    values = prior_quantiles(steps)
    rows, cols = values.flip(0), values
    z1, z0 = torch.meshgrid(rows, cols, indexing="ij")
    z = torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1)
    return decode(model, z), cols, rows


@torch.no_grad()
def interpolation(model: VAE, first: torch.Tensor, second: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoder means along the straight line between the posterior means of two images."""
    ends = posterior_means(model, torch.stack([first.reshape(-1), second.reshape(-1)]))
    weights = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
    return decode(model, (1 - weights) * ends[0] + weights * ends[1])


def run_pictures(model: VAE, test_images: torch.Tensor) -> dict[str, tuple[torch.Tensor, int]]:
    """What a run shows of its model, as ``name -> (images, columns)``; drawn at its end and, with
    ``logger=tensorboard``, at each test evaluation.

    ``reconstructions``: the first test images in one row over their reconstructions;
    ``traversal``: the seed's grid over latent dims 0 and 1 in [-1, 1].
    """
    originals = test_images[:RUN_ORIGINALS].cpu()
    pair = torch.cat([originals, reconstructions(model, originals)])
    return {"reconstructions": (pair, len(originals)), "traversal": (traversal_grid(model), TRAVERSAL_STEPS)}


# ----------------------------------------------------------------------------- latent usage


@dataclass
class LatentUsage:
    """Per-dimension figures (index order) and the whole-space ones; tensors float64 on the CPU."""

    kl_per_dim: torch.Tensor  # nats
    mean_variance: torch.Tensor  # Cov_x(E_q[z_u|x]), the variance over images of each posterior mean
    active: torch.Tensor  # bool
    collapsed: torch.Tensor  # bool: KL < 0.01 nats and not active (the two never hold together)
    mutual_information: float  # nats, He et al.'s estimate (analytic entropy): not bounded by log(mixture_size)
    mixture_size: int  # images per mixture in the I(x; z) estimates
    mutual_information_bounded: float = math.nan  # nats, from sampled log q(z|x): at most log(mixture_size)

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
            "mutual_information_bounded_nats": self.mutual_information_bounded,
            "mutual_information_max_nats": math.log(self.mixture_size),  # the bound of the bounded estimate
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


def mixture_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log (1/n) sum_j N(z_i; loc_j, diag scale_j^2) for each row z_i, scored in chunks of rows."""
    return mixture_and_own_log_density(z, loc, scale)[0]


def mixture_and_own_log_density(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's log-density at each z_i, and the log-density of z_i's own component (row i).

    The squared distances come from three matrix products (no chunk x n x d tensor); float64 keeps
    their cancellation harmless even at the smallest posterior scales. Both figures are read from the
    same numbers, so the own component never exceeds the mixture times n, rounding included.
    """
    precision = scale.square().reciprocal()
    weighted_loc = loc * precision
    constant = (loc * weighted_loc).sum(-1) + 2 * scale.log().sum(-1) + loc.shape[-1] * _LOG_2PI
    mixture, own = [], []
    for start in range(0, len(z), MIXTURE_CHUNK):
        rows = z[start : start + MIXTURE_CHUNK]
        log_density = -0.5 * (rows.square() @ precision.T - 2 * rows @ weighted_loc.T + constant)
        mixture.append(torch.logsumexp(log_density, dim=1))
        if len(z) == len(loc):
            own.append(log_density[torch.arange(len(rows)), torch.arange(start, start + len(rows))])
    log_n = math.log(len(loc))
    return torch.cat(mixture) - log_n, torch.cat(own) if own else torch.empty(0, dtype=z.dtype)


def mutual_information(
    loc: torch.Tensor, scale: torch.Tensor, generator: torch.Generator | None = None, batch: int | None = None
) -> tuple[float, float]:
    """Two estimates of I(x; z) under q, in nats, from posterior parameters (n x d, float64).

    One z_i ~ q(z|x_i) per image; q(z) is the mixture of the batch's q(z|x_j) (``batch=None``: all
    images); batch estimates are averaged, weighted by their sizes. He et al. (2019) take
    E_q[log q(z|x)] in closed form (the analytic entropy): lower variance, but no upper limit, so
    with near-deterministic codes it can exceed log(batch). The second takes log q(z_i|x_i) at the
    sampled z_i: since the mixture holds q(z_i|x_i) / batch, each term, and so the estimate, is at
    most log(batch) (Poole et al. 2019). Returns (He et al.'s, the bounded one).
    """
    loc, scale = loc.double(), scale.double()
    noise = torch.randn(loc.shape, generator=generator, dtype=torch.float64)
    z = loc + scale * noise
    neg_entropy = -(0.5 * (_LOG_2PI + 1) * loc.shape[-1] + scale.log().sum(-1))  # E_q[log q(z|x)], per image
    size = len(loc) if batch is None else batch
    analytic = bounded = 0.0
    for start in range(0, len(loc), size):
        part = slice(start, start + size)
        log_qz, log_q_own = mixture_and_own_log_density(z[part], loc[part], scale[part])
        analytic += float((neg_entropy[part] - log_qz).sum())
        bounded += float((log_q_own - log_qz).sum())
    return analytic / len(loc), bounded / len(loc)


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
    active = mean_variance > active_threshold
    analytic, bounded = mutual_information(loc, scale, generator, mi_batch)
    return LatentUsage(
        kl_per_dim=kl_per_dim,
        mean_variance=mean_variance,
        active=active,
        collapsed=(kl_per_dim < collapse_threshold) & ~active,  # a dimension the decoder can read is not collapsed
        mutual_information=analytic,
        mixture_size=min(len(images), mi_batch or len(images)),
        mutual_information_bounded=bounded,
    )
