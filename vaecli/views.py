"""What to decode for each picture: latent grids, lines and draws (pure tensor code)."""

from __future__ import annotations

import torch

from vaecli.model import VAE


@torch.no_grad()
def traversal_grid(model: VAE, dims: tuple[int, int] = (0, 1), low: float = -1.0, high: float = 1.0,
                   steps: int = 10, center: torch.Tensor | None = None) -> torch.Tensor:
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
    device = next(model.parameters()).device
    return model.decoder(z.to(device)).probs.cpu()
