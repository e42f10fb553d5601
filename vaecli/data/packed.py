"""Images kept compactly in memory (a bit or a byte a pixel) and turned into float rows a batch at a time.

dSprites' 737,280 images of 64 x 64 binary pixels are 3 GB at a byte a pixel and 12 GB as float
rows; packed they are 377 MB. :class:`PackedImages` answers what the training loop and the
stacked trainer ask of a split's images (its length, slices, ``index_select``, ``to``), each time
unpacking only the rows asked for into float rows in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class PackedImages:
    """Rows of ``pixels`` binary values, stored by ``np.packbits`` (big bit order) as (n, pixels / 8) uint8."""

    def __init__(self, bits: np.ndarray, pixels: int, device: torch.device | str = "cpu"):
        self.bits, self.pixels, self.device = bits, pixels, torch.device(device)

    def __len__(self) -> int:
        return len(self.bits)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.bits), self.pixels

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def unpack(self, rows: np.ndarray) -> torch.Tensor:
        """Float rows in {0, 1} of the packed rows given (a view or a gathered copy)."""
        flat = np.unpackbits(rows, axis=1, count=self.pixels)
        return torch.from_numpy(flat).to(self.device, torch.float32)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            return self.unpack(self.bits[index])
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return self.unpack(self.bits[np.asarray(index)])

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("packed images are selected by rows only")
        return self[index]

    def to(self, device: torch.device | str) -> PackedImages:
        """The same bits, unpacked onto ``device`` from now on (the bits themselves stay on the CPU)."""
        return type(self)(self.bits, self.pixels, device)

    def head(self, count: int) -> PackedImages:
        """The first ``count`` rows, still packed."""
        return type(self)(self.bits[:count], self.pixels, self.device)

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Float chunks of ``size`` rows, as ``torch.Tensor.split`` gives them, each unpacked only when
        reached: a list would hold the whole grid as float rows (12 GB for dSprites)."""
        return (self[start : start + size] for start in range(0, len(self), size))

    def float(self) -> torch.Tensor:
        """Every row unpacked: only for small splits (the caller asked for all of it)."""
        return self[:]

    def mean(self, dim: int = 0) -> torch.Tensor:
        """The mean image, summed a chunk at a time (for ``model.output_bias=data_mean``)."""
        if dim != 0:
            raise ValueError("packed images average over rows only")
        total = torch.zeros(self.pixels, dtype=torch.float64)
        for start in range(0, len(self), 65_536):
            total += self[start : start + 65_536].double().sum(0).cpu()
        return (total / max(1, len(self))).float()


class ByteImages(PackedImages):
    """Rows of 8-bit sub-pixels (n, pixels) uint8, given out as float rows k / 255: a quarter of float32's memory."""

    def __init__(self, values: np.ndarray, pixels: int | None = None, device: torch.device | str = "cpu"):
        super().__init__(values, values.shape[1] if pixels is None else pixels, device)

    def unpack(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows)).to(self.device, torch.float32).div_(255.0)
