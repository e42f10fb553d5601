"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): the ELBO minus gamma times a
discriminator's estimate of the total correlation.

A discriminator D tells codes z ~ q(z) (the batch's own codes) from codes whose dimensions were
each shuffled across the batch (samples of prod_j q(z_j)). With D's two logits (``q(z)``,
``permuted``), log(D / (1 - D)) is their difference, and its batch mean estimates
TC(z) = KL(q(z) || prod_j q(z_j)) in nats. The VAE's loss adds gamma times it; D is then trained on
the same batch's codes (detached) by its own Adam. D's initial weights and the permutations come
from random streams of their own (seeded from the run's seed), so they leave the run's noise as it
is. The paper draws the permuted codes from a second batch; vaecli permutes the batch it trains
on, so a step costs one encoder pass (its estimate is then over the same M codes).

Defaults are the paper's: D has 6 layers of 1000 units with LeakyReLU(0.2), Adam with lr 1e-4 and
betas (0.5, 0.9); gamma 40 sits in disentanglement_lib's sweep (10, 20, 30, 40, 50, 100). D and
its Adam are part of the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from vaecli.config.schema import choice, rule
from vaecli.errors import UsageError
from vaecli.objectives.annealing import KlScheduleConfig
from vaecli.objectives.elbo import RegularisedElbo
from vaecli.objectives.registry import OBJECTIVES


@dataclass
class FactorConfig(KlScheduleConfig):
    """``objective=factor`` (conf/objective/factor.yaml)."""

    name: str = choice(("factor",), "factor")
    gamma: float = rule(lambda value: value >= 0, "must be >= 0", default=40.0)
    disc_layers: int = rule(lambda value: value >= 1, "must be >= 1", default=6)
    disc_units: int = rule(lambda value: value >= 1, "must be >= 1", default=1000)
    disc_lr: float = rule(lambda value: value > 0, "must be > 0", default=1e-4)
    disc_betas: list[float] = rule(
        lambda betas: len(betas) == 2 and all(0 <= beta < 1 for beta in betas),
        "must be two numbers in [0, 1)",
        default_factory=lambda: [0.5, 0.9],
    )


def discriminator(latent_size: int, layers: int, units: int) -> nn.Sequential:
    """``layers`` hidden layers of ``units`` with LeakyReLU(0.2), then two logits (q(z), permuted)."""
    sizes = [latent_size] + [units] * layers
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        modules += [nn.Linear(fan_in, fan_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], 2))


def own_init(network: nn.Module, generator: torch.Generator) -> None:
    """torch's default Linear init (uniform, bound 1/sqrt(fan_in) for weights and biases), drawn from
    ``generator``: the discriminator's start leaves every other random stream (CPU and GPU) as it was."""
    with torch.no_grad():
        for layer in network.modules():
            if isinstance(layer, nn.Linear):
                bound = layer.in_features**-0.5
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each dimension shuffled across the batch on its own: samples of prod_j q(z_j)."""
    orders = torch.argsort(torch.rand(z.shape, generator=generator).to(z.device), dim=0)
    return torch.gather(z, 0, orders)


DISCRIMINATOR_SEED = 7919  # offset from the run's seed for the discriminator's own random streams


class FactorElbo(RegularisedElbo):
    own_columns = ("tc_nats", "disc_loss", "disc_accuracy")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        objective = cfg.objective
        self.gamma = float(objective.gamma)
        # D's init and its permutations draw from streams of their own, seeded from the run's seed: the
        # run's random stream (its noise, a batched member's replica of it) stays what beta's would be
        with torch.random.fork_rng(devices=[]):  # torch's own init draws from the CPU stream: put it back
            self.discriminator = discriminator(self.latent_size, int(objective.disc_layers), int(objective.disc_units))
        own_init(self.discriminator, torch.Generator().manual_seed(int(cfg.seed) + DISCRIMINATOR_SEED))
        self.permutations = torch.Generator().manual_seed(int(cfg.seed) + DISCRIMINATOR_SEED + 1)
        self.disc_lr, self.disc_betas = float(objective.disc_lr), tuple(float(b) for b in objective.disc_betas)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.disc_lr, betas=self.disc_betas)

    @classmethod
    def check(cls, cfg: Any) -> None:
        super().check(cfg)
        if int(cfg.latent_size) < 2:
            raise UsageError(
                f"objective=factor with latent_size={cfg.latent_size}: with one dimension there is no total "
                "correlation to penalise (permuted codes equal the codes); use latent_size=2 or more"
            )
        if int(cfg.train.batch_size) < 2:
            raise UsageError(
                f"objective=factor with train.batch_size={cfg.train.batch_size}: permuting codes across the batch "
                "needs two or more images; use train.batch_size=2 or more"
            )

    def start(self, examples: int, total_steps: int, device: torch.device | None = None) -> None:
        super().start(examples, total_steps, device)
        if device is not None and device.type != "cpu":
            self.discriminator.to(device)
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.disc_lr, betas=self.disc_betas)

    def regulariser(
        self, q: Normal, z: torch.Tensor, kl_dims: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.discriminator(z)
        tc = (logits[:, 0] - logits[:, 1]).mean()
        extra = {"tc_nats": tc.detach()}
        if not torch.is_grad_enabled():  # a logged row: how well D tells the two apart on this batch
            local = generator or torch.Generator().manual_seed(step)
            loss, accuracy = self.discriminator_loss(z, permute_dims(z, local))
            extra.update(disc_loss=loss, disc_accuracy=accuracy)
        return self.floored_kl(kl_dims) + self.gamma * tc, extra

    def discriminator_loss(self, codes: torch.Tensor, permuted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of D on both kinds of codes (mean of the two halves), and its accuracy."""
        logits = self.discriminator(torch.cat([codes, permuted]))
        labels = torch.cat([codes.new_zeros(len(codes)), codes.new_ones(len(permuted))]).long()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels), accuracy

    def after_backward(self, z: torch.Tensor, step: int) -> None:
        """D's step on this batch's codes (detached; their dims permuted with the run's random stream)."""
        codes = z.detach()
        self.optimizer.zero_grad(set_to_none=True)  # drops what the VAE's loss left in D
        loss, _ = self.discriminator_loss(codes, permute_dims(codes, self.permutations))
        loss.backward()
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "permutations": self.permutations.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.permutations.set_state(state["permutations"])


OBJECTIVES.register("factor", FactorElbo, schema=FactorConfig)
