"""Binarised MNIST: pixels drawn as Bernoulli(grey level), fixed once or fresh on every use.

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

import torch

BINARIZE = ("none", "dynamic", "static")
STATIC_TRAIN_SEED = 20_160_001  # fixed for every run: the binary training images of ``static``
TEST_SEED = 20_160_002  # fixed for every run: the binary test images of ``static`` and ``dynamic``
DYNAMIC_SEED_OFFSET = 7_919  # the dynamic stream starts from run seed + offset, apart from the shuffler's


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw of ``images`` (n, pixels) from a generator of its own seeded with ``seed``.

    Drawn on the CPU, so the binary images are the same on every device, and row by row in order,
    so the first m images come out the same whether or not a limit cut the split.
    """
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(images.shape, generator=generator)
    return (uniform < images.cpu()).to(images.dtype).to(images.device)


def binarize_split_images(images: torch.Tensor, mode: str, train: bool) -> torch.Tensor:
    """The images a split holds in memory under ``mode``: dynamic training images stay grey (drawn per batch)."""
    if mode not in BINARIZE:
        raise ValueError(f"unknown binarisation {mode!r}; expected one of {', '.join(BINARIZE)}")
    if mode == "none" or (mode == "dynamic" and train):
        return images
    return binarize_once(images, STATIC_TRAIN_SEED if train else TEST_SEED)


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
    if mode not in BINARIZE:
        raise ValueError(f"unknown binarisation {mode!r}; expected one of {', '.join(BINARIZE)}")
    return DynamicBinarizer(seed, device) if mode == "dynamic" else None
