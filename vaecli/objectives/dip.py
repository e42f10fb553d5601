"""DIP-VAE (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from
Unlabeled Observations"): the ELBO plus a penalty that moves the covariance of the codes towards
the identity.

    penalty = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

with C the batch covariance of the posterior means, Cov[mu(x)] (``variant=i``), or of the codes
themselves, Cov[mu(x)] + E diag(sigma^2(x)) (``variant=ii``). Defaults as disentanglement_lib:
lambda_od 10 and lambda_d = 10 * lambda_od for DIP-VAE-I, = lambda_od for DIP-VAE-II
(``lambda_d: null`` picks that rule).
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
class DipConfig(KlScheduleConfig):
    """``objective=dip`` (conf/objective/dip.yaml)."""

    name: str = choice(("dip",), "dip")
    variant: str = choice(("i", "ii"), "i")
    lambda_od: float = rule(lambda value: value >= 0, "must be >= 0", default=10.0)
    lambda_d: float | None = rule(lambda value: value is None or value >= 0, "must be >= 0 (or null)", default=None)


def code_covariance(loc: torch.Tensor, scale: torch.Tensor, variant: str) -> torch.Tensor:
    """Cov[mu(x)] over the batch (divided by the batch size), plus E diag(sigma^2) for variant ii."""
    centred = loc - loc.mean(0, keepdim=True)
    covariance = centred.T @ centred / loc.shape[0]
    if variant == "ii":
        covariance = covariance + torch.diag(scale.square().mean(0))
    return covariance


def dip_penalties(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_{i != j} C_ij^2 and sum_i (C_ii - 1)^2."""
    diagonal = covariance.diagonal()
    off = (covariance - torch.diag(diagonal)).square().sum()  # never below 0, as a difference of sums can be
    return off, (diagonal - 1).square().sum()


class DipElbo(RegularisedElbo):
    own_columns = ("dip_off_diagonal", "dip_diagonal")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        objective = cfg.objective
        self.variant, self.lambda_od = str(objective.variant), float(objective.lambda_od)
        default_d = 10 * self.lambda_od if self.variant == "i" else self.lambda_od
        self.lambda_d = default_d if objective.lambda_d is None else float(objective.lambda_d)

    def regulariser(
        self, q: Normal, z: torch.Tensor, kl_dims: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        off, diagonal = dip_penalties(code_covariance(q.loc, q.scale, self.variant))
        penalty = self.floored_kl(kl_dims) + self.lambda_od * off + self.lambda_d * diagonal
        return penalty, {"dip_off_diagonal": off.detach(), "dip_diagonal": diagonal.detach()}


OBJECTIVES.register("dip", DipElbo, schema=DipConfig)
