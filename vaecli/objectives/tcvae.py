"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

The average KL splits into index-code mutual information, total correlation and dimension-wise KL:

    E_x KL(q(z|x) || p(z)) = I(x; z) + TC(z) + sum_j KL(q(z_j) || p(z_j))

and the loss is reconstruction + alpha * MI + beta * TC + gamma * dim-KL, every term a per-image
sum in nats. Each needs log q(z) and log q(z_j) of the aggregate posterior q(z) = (1/N) sum_n q(z|x_n)
at a code z_i drawn from q(z|x_i), estimated from the batch (M codes, N training images):

- ``mws`` (minibatch weighted sampling): q(z_i) ~ (1/M) sum_j q(z_i|x_j), every batch image alike.
  Chen et al. write 1/(N M): a constant log N apart in every log-density, which moves no gradient
  but would put the reported TC (latent_size - 1) * log N nats off; this form converges to the
  true TC as the batch grows.
- ``mss`` (minibatch stratified sampling): the image the code came from weighted 1/N, each of the
  other M - 1 weighted (N - 1) / (N (M - 1)): unbiased for q(z_i) at any batch size, so less bias
  in its logarithm than mws (tests/test_objectives.py measures both against a closed form).

For every code the three terms add up to log q(z_i|x_i) - log p(z_i), the single-sample KL, so
MI + TC + dim-KL is the batch's KL estimate whatever the estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Normal

from vaecli.config.schema import choice, rule
from vaecli.errors import UsageError
from vaecli.objectives.annealing import KlScheduleConfig
from vaecli.objectives.elbo import RegularisedElbo, gaussian_log_density
from vaecli.objectives.registry import OBJECTIVES

ESTIMATORS = ("mws", "mss")


@dataclass
class TcvaeConfig(KlScheduleConfig):
    """``objective=tcvae`` (conf/objective/tcvae.yaml); its weights are its own (the top-level ``beta``
    belongs to ``objective=beta``)."""

    name: str = choice(("tcvae",), "tcvae")
    alpha: float = rule(lambda value: value >= 0, "must be >= 0", default=1.0)  # on I(x; z)
    beta: float = rule(lambda value: value >= 0, "must be >= 0", default=6.0)  # on TC
    gamma: float = rule(lambda value: value >= 0, "must be >= 0", default=1.0)  # on the dimension-wise KL
    estimator: str = choice(ESTIMATORS, "mss")


def log_weights(batch: int, examples: int, estimator: str, device: torch.device | None = None) -> torch.Tensor:
    """log W (batch x batch): row i weighs the batch's q(z_i|x_j) into an estimate of q(z_i). A batch of
    one (the last chunk of an evaluation) has only the code's own image: weight 1."""
    if estimator == "mws" or batch == 1:
        return torch.full((batch, batch), -math.log(batch), device=device)
    others = math.log(examples - 1) - math.log(examples) - math.log(batch - 1)
    weights = torch.full((batch, batch), others, device=device)
    weights.fill_diagonal_(-math.log(examples))
    return weights


def decomposition(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, examples: int, estimator: str
) -> dict[str, torch.Tensor]:
    """Per code (batch,): log q(z|x), log q(z), sum_j log q(z_j) and log p(z), each in nats."""
    batch = z.shape[0]
    pairs = gaussian_log_density(z[:, None, :], loc[None, :, :], scale[None, :, :])  # [i, j, dim]
    weights = log_weights(batch, examples, estimator, z.device)
    return {
        "log_q_given_x": pairs.diagonal(dim1=0, dim2=1).sum(0),
        "log_q": torch.logsumexp(weights + pairs.sum(-1), dim=1),
        "log_q_dims": torch.logsumexp(weights[:, :, None] + pairs, dim=1),  # (batch, dim)
        "log_prior_dims": gaussian_log_density(z, torch.zeros_like(z), torch.ones_like(z)),
    }


class TcvaeElbo(RegularisedElbo):
    own_columns = ("mi_nats", "tc_nats", "dim_kl_nats")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        objective = cfg.objective
        self.alpha, self.beta, self.gamma = float(objective.alpha), float(objective.beta), float(objective.gamma)
        self.estimator = str(objective.estimator)

    @classmethod
    def check(cls, cfg: Any) -> None:
        super().check(cfg)
        if int(cfg.train.batch_size) < 2:
            raise UsageError(
                f"objective=tcvae with train.batch_size={cfg.train.batch_size}: its estimates of q(z) need "
                "other images in the batch; use train.batch_size=2 or more (64 and up estimate well)"
            )

    def regulariser(
        self, q: Normal, z: torch.Tensor, kl_dims: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = decomposition(z, q.loc, q.scale, max(self.examples, z.shape[0]), self.estimator)
        mi = (parts["log_q_given_x"] - parts["log_q"]).mean()
        tc = (parts["log_q"] - parts["log_q_dims"].sum(-1)).mean()
        dim_kls = (parts["log_q_dims"] - parts["log_prior_dims"]).mean(0)
        dim_kl = dim_kls.clamp(min=self.free_bits).sum() if self.free_bits else dim_kls.sum()
        penalty = self.alpha * mi + self.beta * tc + self.gamma * dim_kl
        return penalty, {"mi_nats": mi.detach(), "tc_nats": tc.detach(), "dim_kl_nats": dim_kls.sum().detach()}


OBJECTIVES.register("tcvae", TcvaeElbo, schema=TcvaeConfig)
