"""Capacity annealing (Burgess et al. 2018, "Understanding disentangling in beta-VAE"):
reconstruction + gamma * |KL - C|, with C raised linearly from 0 to ``c_max`` nats over ``c_steps``.

Units: KL and C are per-image sums in nats (the paper's and disentanglement_lib's AnnealedVAE's),
and gamma weighs nats against nats. The preset is AnnealedVAE's: gamma 1000, c_max 25 nats over
100,000 steps. Against the seed's per-pixel units: the loss column is this per-image loss / 784,
so a seed-units beta of b is a per-image KL weight of b * 784 / latent_size, and gamma = 1000
pulls the KL towards C about 1000 / (784 / latent_size) times harder than beta = 1 would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Normal

from vaecli.config.schema import choice, rule
from vaecli.objectives.annealing import KlScheduleConfig
from vaecli.objectives.elbo import RegularisedElbo
from vaecli.objectives.registry import OBJECTIVES


@dataclass
class CapacityConfig(KlScheduleConfig):
    """``objective=capacity`` (conf/objective/capacity.yaml)."""

    name: str = choice(("capacity",), "capacity")
    gamma: float = rule(lambda value: value >= 0, "must be >= 0", default=1000.0)
    c_max: float = rule(lambda value: value >= 0, "must be >= 0 nats per image", default=25.0)
    c_steps: int = rule(lambda value: value >= 1, "must be >= 1 step", default=100_000)


def capacity_at(step: int, c_max: float, c_steps: int) -> float:
    """C at ``step``: c_max * step / c_steps, then c_max."""
    return c_max * min(1.0, step / c_steps)


class CapacityElbo(RegularisedElbo):
    own_columns = ("capacity_nats", "kl_gap_nats")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        objective = cfg.objective
        self.gamma, self.c_max, self.c_steps = float(objective.gamma), float(objective.c_max), int(objective.c_steps)

    def regulariser(
        self, q: Normal, z: torch.Tensor, kl_dims: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kl = self.floored_kl(kl_dims)
        capacity = capacity_at(step, self.c_max, self.c_steps)
        gap = (kl - capacity).abs()
        return self.gamma * gap, {"capacity_nats": torch.tensor(capacity), "kl_gap_nats": gap.detach()}


OBJECTIVES.register("capacity", CapacityElbo, schema=CapacityConfig)
