"""The codes a disentanglement metric reads: every image of a full factor grid, encoded once.

Rows are in C order over the factors (dSprites: shape, scale, orientation, posX, posY, posY
fastest), so the image with factor classes c is row ``ravel_multi_index(c, sizes)``: drawing
images with one factor held fixed (the FactorVAE and beta-VAE scores) is indexing, never encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CODES = "posterior means"


@dataclass(frozen=True)
class GridCodes:
    """Posterior means (and scales) of every image of a full factor grid, in C order over the factors."""

    loc: np.ndarray
    scale: np.ndarray
    sizes: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        """Reject inconsistent shapes early: every metric indexes rows by factor classes."""
        rows = int(np.prod(self.sizes))
        if self.loc.ndim != 2 or self.loc.shape[0] != rows:
            raise ValueError(f"loc must be ({rows}, d) for sizes {self.sizes}, got {self.loc.shape}")
        if self.scale.shape != self.loc.shape:
            raise ValueError(f"scale shape {self.scale.shape} differs from loc shape {self.loc.shape}")
        if len(self.names) != len(self.sizes):
            raise ValueError("one name per factor is required")

    def factors(self, index: np.ndarray) -> np.ndarray:
        """Class indices (..., k) of rows `index` (any shape), from the C-order layout."""
        return np.stack(np.unravel_index(np.asarray(index), self.sizes), axis=-1)

    def index_of(self, classes: np.ndarray) -> np.ndarray:
        """Row indices of images with the given factor classes (..., k)."""
        return np.ravel_multi_index(tuple(np.moveaxis(classes, -1, 0)), self.sizes)

    def random_classes(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Uniform independent factor classes of shape (*shape, k)."""
        return rng.integers(0, np.asarray(self.sizes), size=(*shape, len(self.sizes)))

    def sample_index(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n rows drawn uniformly with replacement (uniform rows = independent uniform factors)."""
        return rng.integers(0, self.loc.shape[0], size=n)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, d) and factor classes (n, k) of n uniformly drawn images."""
        index = self.sample_index(n, rng)
        return self.loc[index], self.factors(index)

    def fixed_index(self, factor: np.ndarray, value: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Rows (m, n): for each of m (factor, value) pairs, n random images with that factor held at value."""
        factor, value = np.asarray(factor), np.asarray(value)
        classes = self.random_classes((len(factor), n), rng)
        classes[np.arange(len(factor))[:, None], np.arange(n)[None, :], factor[:, None]] = value[:, None]
        return self.index_of(classes)

    def fixed(self, factor: int, value: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Codes (n, d) of n random images with `factor` held at `value`, the other factors uniform."""
        return self.loc[self.fixed_index(np.array([factor]), np.array([value]), n, rng)[0]]
