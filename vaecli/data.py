"""The dataset as tensors in memory, and batches cut from them by slicing.

A per-image Dataset/DataLoader costs more than this model's whole step on a CPU, so each split
is one float tensor of shape (n, 784) and a batch is a slice (or a gather, when shuffling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vaecli.datasets import DATASETS, DataFile, ensure_dataset, read_idx


@dataclass
class Split:
    images: torch.Tensor  # float32 (n, 784) in [0, 1]
    labels: torch.Tensor  # int64 (n,)
    files: tuple[DataFile, ...] = ()  # what it was read from, with the MD5 of the bytes parsed

    def __len__(self) -> int:
        return len(self.images)


def load_split(
    name: str,
    root: str | Path,
    train: bool,
    limit: int | None = None,
    say: Callable[[str], None] | None = None,
) -> Split:
    """One split read from its verified IDX files (torchvision's layout; its processed/*.pt never)."""
    spec = DATASETS[name]
    root = ensure_dataset(spec, Path(root).expanduser(), **({"say": say} if say else {}))
    prefix = "train" if train else "t10k"
    pixels, image_file = read_idx(spec, root, f"{prefix}-images-idx3-ubyte")
    labels, label_file = read_idx(spec, root, f"{prefix}-labels-idx1-ubyte")
    pixels, labels = pixels[:limit], labels[:limit]  # a view: only the images kept are converted
    images = torch.from_numpy(pixels.reshape(len(pixels), -1).astype("float32")).div_(255.0)
    return Split(images=images, labels=torch.from_numpy(labels.astype("int64")), files=(image_file, label_file))


def training_set(train_split: Split, test_split: Split, use: str) -> Split:
    """``use='all'`` trains on all 70,000 images as the seed does (the test set included)."""
    if use == "train":
        return train_split
    return Split(
        torch.cat([train_split.images, test_split.images]),
        torch.cat([train_split.labels, test_split.labels]),
        train_split.files + test_split.files,
    )


class Batches:
    """An endless stream of batches: in order as the seed, or reshuffled every epoch."""

    def __init__(self, images: torch.Tensor, batch_size: int, shuffle: bool, generator: torch.Generator):
        self.images = images
        self.batch_size = min(batch_size, len(images))
        self.per_epoch = len(images) // self.batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.order: torch.Tensor | None = None

    def batch(self, step: int) -> torch.Tensor:
        """The batch for 1-based ``step``; epochs drop their last partial batch."""
        position = (step - 1) % self.per_epoch
        start = position * self.batch_size
        if not self.shuffle:
            return self.images[start : start + self.batch_size]
        if position == 0 or self.order is None:
            self.order = self.new_order()
        return self.take(self.order[..., start : start + self.batch_size])

    def new_order(self) -> torch.Tensor:
        """This epoch's order: drawn on the CPU generator (the same on every device), kept where the images are."""
        return torch.randperm(len(self.images), generator=self.generator).to(self.images.device)

    def take(self, window: torch.Tensor) -> torch.Tensor:
        """The images at ``window``, a slice of this epoch's order."""
        return self.images.index_select(0, window)

    def epoch(self, step: int) -> float:
        """Epochs completed after ``step`` steps."""
        return step / self.per_epoch
