"""Each stacked member's own random streams: its batch order and its reparameterisation noise.

A member in a group sees exactly the batches and noise it would see alone, so a group of one
reproduces the solo loop and a member's results never depend on who else is in its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vaecli.data.tensors import Batches
from vaecli.models.mlp import VAE


def solo_start(seed: int, latent_size: int, settings: Any) -> tuple[VAE, torch.Generator]:
    """A member's model and noise generator exactly as the solo loop starts them.

    The solo loop seeds the global RNG, builds the model, then draws every q.rsample() noise from
    the global RNG; a CPU generator holding the global state from that point replays that noise.
    The caller's global RNG state is left as it was.
    """
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = (
            settings.build(latent_size)
            if getattr(settings, "build", None) is not None
            else VAE(
                latent_size=latent_size,
                hidden_sizes=list(settings.hidden_sizes),
                min_scale=settings.min_scale,
                likelihood=settings.likelihood,
                activation=settings.activation,
            )
        )
        noise = torch.Generator().set_state(torch.get_rng_state())
    finally:
        torch.set_rng_state(saved)
    return model, noise


class StackedBatches(Batches):
    """The members' batches, each with data.Batches' semantics and its own shuffle generator.

    Members with the same seed share one order (as their solo runs would), so when every member
    has the same seed, or shuffling is off, a batch is one (B, 784) tensor that all members read;
    otherwise it is (G, B, 784). ``order`` holds each seed's order this epoch, one row per seed in :attr:`seeds`.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, shuffle: bool, seeds: Sequence[int]):
        super().__init__(images, batch_size, shuffle, generator=torch.Generator())
        self.seeds = sorted(set(seeds))
        self.generators = {seed: torch.Generator().manual_seed(seed) for seed in self.seeds}
        self.select(seeds)

    def select(self, seeds: Sequence[int]) -> None:
        """Serve the members whose seeds are ``seeds`` (in slot order); used when members drop out."""
        kept = sorted(set(seeds))
        if self.order is not None:
            self.order = self.order[[self.seeds.index(seed) for seed in kept]]
        self.seeds = kept
        self.member_seeds = list(seeds)
        self.rows = torch.tensor([kept.index(seed) for seed in seeds], device=self.images.device)
        self.shared = not self.shuffle or len(kept) == 1

    def new_order(self) -> torch.Tensor:
        orders = [torch.randperm(len(self.images), generator=self.generators[seed]) for seed in self.seeds]
        return torch.stack(orders).to(self.images.device)

    def take(self, window: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.images.index_select(0, window[self.rows[0]])
        rows = window.index_select(0, self.rows).reshape(-1)
        return self.images.index_select(0, rows).view(len(self.member_seeds), self.batch_size, -1)

    def order_of(self, seed: int) -> torch.Tensor | None:
        """This epoch's order of the member with ``seed`` (None before the first shuffle or without shuffling)."""
        if self.order is None or seed not in self.seeds:
            return None
        return self.order[self.seeds.index(seed)]

    def shuffle_state(self, seed: int) -> torch.Tensor:
        """The shuffle generator state a solo run with ``seed`` would have now (for resume)."""
        return self.generators[seed].get_state()

    def restore(self, seed: int, shuffle_state: torch.Tensor, order: torch.Tensor | None) -> None:
        """Seed ``seed``'s shuffle generator and this epoch's order, from a checkpoint (as data.Batches resumes)."""
        self.generators[seed].set_state(shuffle_state)
        if order is None:
            return
        if self.order is None:  # every seed of a group resumes at the same step: each row gets filled
            self.order = torch.zeros(len(self.seeds), len(self.images), dtype=torch.int64, device=self.images.device)
        self.order[self.seeds.index(seed)] = order.to(torch.int64).to(self.images.device)


class NoiseStreams:
    """Per-member standard normal noise (G, B, padded latent), zero on padded dims."""

    def __init__(self, generators: Sequence[torch.Generator], latent_sizes: Sequence[int], padded: int):
        self.generators = list(generators)
        self.latent_sizes = list(latent_sizes)
        self.padded = padded

    def select(self, keep: Sequence[int]) -> None:
        self.generators = [self.generators[i] for i in keep]
        self.latent_sizes = [self.latent_sizes[i] for i in keep]

    def draw(self, batch: int, device: torch.device) -> torch.Tensor:
        """One draw per member, of its own shape, so each generator advances as the solo run's does."""
        padded = any(size < self.padded for size in self.latent_sizes)
        noise = (torch.zeros if padded else torch.empty)(len(self.generators), batch, self.padded)
        for slot, (generator, size) in enumerate(zip(self.generators, self.latent_sizes)):
            if size == self.padded:
                noise[slot].normal_(generator=generator)  # contiguous: the same kernel path as solo
            else:
                noise[slot, :, :size] = torch.randn(batch, size, generator=generator)
        return noise.to(device, non_blocking=True)
