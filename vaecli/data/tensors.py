"""The dataset as tensors in memory, binarised or not, and batches cut from them by slicing.

A per-image Dataset/DataLoader costs more than this model's whole step on a CPU, so each split
is one float tensor of shape (n, 784) and a batch is a slice (or a gather, when shuffling).

Binarised MNIST (``data.binarize``): pixels drawn as Bernoulli(grey level), fixed once or fresh on every use.

- ``none``: the grey levels themselves (the seed's data).
- ``static``: one draw of train and of test with fixed seeds, the same in every run. It is not
  Larochelle's binarized MNIST file (not available offline), so its figures are close to but not
  identical with results reported on that file.
- ``dynamic`` (Burda et al. 2016): a fresh draw of each training batch every time it is used;
  the test set is drawn once with the same fixed seed as ``static``, so every model, whatever its
  training data, is evaluated on the same binary images.

Every draw has a generator of its own: the model's initialisation, the reparameterisation noise
and the shuffling order stay exactly what they are without binarisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaecli.data.registry import DATASETS, options_for
from vaecli.data.sources import DataFile

BINARIZE = ("none", "dynamic", "static")
STATIC_TRAIN_SEED = 20_160_001  # fixed for every run: the binary training images of ``static``
TEST_SEED = 20_160_002  # fixed for every run: the binary test images of ``static`` and ``dynamic``
DYNAMIC_SEED_OFFSET = 7_919  # the dynamic stream starts from run seed + offset, apart from the shuffler's


@dataclass
class Split:
    images: torch.Tensor  # float32 (n, channels * height * width) in [0, 1]: rows, channel-major
    labels: torch.Tensor  # int64 (n,)
    files: tuple[DataFile, ...] = ()  # what it was read from, with the MD5 of the bytes parsed
    factors: torch.Tensor | None = None  # int64 (n, factors): class indices, for data with known factors

    def __len__(self) -> int:
        return len(self.images)


def load_split(
    name: str,
    root: str | Path,
    train: bool,
    limit: int | None = None,
    say: Callable[[str], None] | None = None,
    options: Any = None,
) -> Split:
    """One split of the registered dataset ``name``, verified (or fetched) under ``root``; ``options``
    is the run's ``data`` node, for a dataset with settings of its own (``data=folder``)."""
    split = DATASETS.entry(name).split
    return split(Path(root).expanduser(), train, limit, say, **options_for(split, options))


def as_float_images(pixels) -> torch.Tensor:
    """uint8 images (n, ...) as float rows (n, pixels) in [0, 1], the form every split holds."""
    return torch.from_numpy(pixels.reshape(len(pixels), -1).astype("float32")).div_(255.0)


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw of ``images`` (n, pixels) from a generator of its own seeded with ``seed``.

    Drawn on the CPU, so the binary images are the same on every device, and row by row in order,
    so the first m images come out the same whether or not a limit cut the split.
    """
    generator = torch.Generator().manual_seed(seed)
    images = images if isinstance(images, torch.Tensor) else images.float()  # a folder's uint8 training split
    uniform = torch.rand(images.shape, generator=generator)
    return (uniform < images.cpu()).to(images.dtype).to(images.device)


def check_binarize(mode: str) -> None:
    """Refuse a binarisation this module does not know (the config checks it first, with its own message)."""
    if mode not in BINARIZE:
        raise ValueError(f"unknown binarisation {mode!r}; expected one of {', '.join(BINARIZE)}")


def binarize_split(images: torch.Tensor, mode: str, train: bool) -> torch.Tensor:
    """A split's images as they are evaluated under ``mode``: the grey levels, or one fixed draw.

    ``static`` and ``dynamic`` give the same draw (a dynamic run is evaluated on the binary test set
    of a static one, and on a fixed draw of its training images); training batches of a dynamic run
    are drawn afresh instead (:class:`DynamicBinarizer`).
    """
    check_binarize(mode)
    return images if mode == "none" else binarize_once(images, STATIC_TRAIN_SEED if train else TEST_SEED)


def binarized(split: Split, mode: str, train: bool) -> Split:
    """:func:`binarize_split` on a whole split, labels kept."""
    return Split(binarize_split(split.images, mode, train), split.labels, split.files)


class DynamicBinarizer:
    """A fresh Bernoulli draw of each batch, from a generator used for nothing else.

    The generator lives on the batches' device (cheap on the hot path: one uniform draw and one
    compare per pixel); its state goes into the checkpoint so a resumed run continues exactly.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device).manual_seed(seed + DYNAMIC_SEED_OFFSET)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        uniform = torch.rand(batch.shape, generator=self.generator, device=self.generator.device)
        return (uniform.to(batch.device) < batch).to(batch.dtype)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def batch_binarizer(mode: str, seed: int, device: torch.device | str = "cpu") -> DynamicBinarizer | None:
    """What the training loop applies to each batch: a DynamicBinarizer for ``dynamic``, else nothing."""
    check_binarize(mode)
    return DynamicBinarizer(seed, device) if mode == "dynamic" else None


def training_set(train_split: Split, test_split: Split, use: str, binarize: str) -> Split:
    """What training draws batches from; ``use='all'`` adds the test set, as the seed does.

    ``static``: the fixed draws (the test part is the very binary test set that is evaluated);
    ``none`` and ``dynamic``: the grey levels (a dynamic run draws each batch as it is used).
    """
    fixed = binarize == "static"
    parts = [binarized(train_split, binarize, train=True) if fixed else train_split]
    if use == "all":
        parts.append(binarized(test_split, binarize, train=False) if fixed else test_split)
    if len(parts) == 1:
        return parts[0]
    return Split(
        torch.cat([part.images for part in parts]),
        torch.cat([part.labels for part in parts]),
        tuple(file for part in parts for file in part.files),
    )


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Whole batches in one pass over ``examples`` images; a batch larger than the data takes all of it."""
    return max(1, examples // min(batch_size, examples))


class Batches:
    """An endless stream of batches: in order as the seed, or reshuffled every epoch; binarised per batch
    when a :class:`DynamicBinarizer` is given (its state is ``binarizer.get_state()`` for a checkpoint)."""

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator,
        binarizer: DynamicBinarizer | None = None,
    ):
        self.images = images
        self.batch_size = min(batch_size, len(images))
        self.per_epoch = steps_per_epoch(len(images), batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.binarizer = binarizer
        self.order: torch.Tensor | None = None

    def batch(self, step: int) -> torch.Tensor:
        """The batch for 1-based ``step``; epochs drop their last partial batch."""
        batch = self.images_at(step)
        return batch if self.binarizer is None else self.binarizer(batch)

    def images_at(self, step: int) -> torch.Tensor:
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
