"""Pictures of a run: the seed's loss plot (plotnine) and image grids (torchvision.utils)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import torch
from torchvision.utils import make_grid, save_image

TILE = 28
PADDING = 2


def as_tiles(images: torch.Tensor) -> torch.Tensor:
    """(n, 784) or (n, 28, 28) pixel intensities -> (n, 1, 28, 28) for torchvision."""
    return images.detach().float().cpu().reshape(-1, 1, TILE, TILE).clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path, columns: int) -> Path:
    """Tiles in rows of ``columns``, white-on-black as MNIST is drawn, 2-pixel padding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(as_tiles(images), path, nrow=columns, padding=PADDING, pad_value=0.5)
    return path


def grid_tensor(images: torch.Tensor, columns: int) -> torch.Tensor:
    return make_grid(as_tiles(images), nrow=columns, padding=PADDING, pad_value=0.5)


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """(height, width) in pixels of a grid that ``save_grid`` writes."""
    return rows * (TILE + PADDING) + PADDING, columns * (TILE + PADDING) + PADDING


def loss_plot(metrics: pd.DataFrame, path: Path, title: str = "") -> Path:
    """The seed's figure: loss terms against step on log-log axes, train and test."""
    from plotnine import aes, geom_line, ggplot, labs, scale_x_log10, scale_y_log10, theme_bw

    long = metrics.melt(
        id_vars=["step", "split"],
        value_vars=["loss", "reconstruction", "kl"],
        var_name="term",
        value_name="value",
    )
    long = long[pd.to_numeric(long["value"], errors="coerce") > 0]
    plot = (
        ggplot(long, aes("step", "value", color="term", linetype="split"))
        + geom_line()
        + scale_x_log10()
        + scale_y_log10()
        + labs(x="step", y="per-dimension mean (seed units)", title=title)
        + theme_bw()
    )
    save_plot(plot, path, width=6, height=4)
    return path


def save_plot(plot, path: Path, width: float, height: float, dpi: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plotnine warns about saving and dropped rows
        plot.save(path, width=width, height=height, dpi=dpi, verbose=False)
