"""What to decode for each picture (latent grids, lines and draws) and how much each latent dim is used.

Pure tensor code: drawing lives in ``images`` and ``plots``.
"""

from __future__ import annotations

import torch

from vaecli.model import VAE
from vaecli.objective import kl_to_standard_normal


@torch.no_grad()
def traversal_grid(
    model: VAE,
    dims: tuple[int, int] = (0, 1),
    low: float = -1.0,
    high: float = 1.0,
    steps: int = 10,
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


@torch.no_grad()
def posterior_means(model: VAE, images: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Means of q(z|x) for each image, on the CPU; chunked so 70,000 images fit anywhere."""
    device = model_device(model)
    return torch.cat([model.encoder(part.to(device)).loc.cpu() for part in images.split(chunk)])


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


@torch.no_grad()
def kl_per_dimension(model: VAE, images: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Mean over ``images`` of KL(q(z_i|x) || N(0, 1)) for each latent dim i, in nats.

    Dimensions the model ignores sit near 0 (q equals the prior there); the ones it uses
    carry the information, so this is the order in which to look at them.
    """
    device = model_device(model)
    total = torch.zeros(model.latent_size, dtype=torch.float64)
    for part in images.split(chunk):
        q = model.encoder(part.to(device))
        q64 = torch.distributions.Normal(q.loc.double(), q.scale.double(), validate_args=False)
        total += kl_to_standard_normal(q64).sum(0).cpu()
    return (total / max(len(images), 1)).float()


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
