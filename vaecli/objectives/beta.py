"""The beta-weighted ELBO, in the seed's per-dimension units and in nats per image.

The seed averages over pixels and latent dimensions, so its beta means
``beta_sum = beta * 784 / latent_size`` under the usual per-image sums. Both scales are
reported so runs compare with the seed and with the literature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributions import Normal

from vaecli.config.schema import choice
from vaecli.models.likelihoods import logit_gradient, nll_sum
from vaecli.objectives.annealing import KlScheduleConfig, check_schedule, kl_weight, schedules_kl
from vaecli.objectives.registry import OBJECTIVES
from vaecli.objectives.terms import terms_row

EVAL_CHUNK = 5000  # images per forward pass when evaluating a whole split


def kl_to_standard_normal(q: Normal) -> torch.Tensor:
    """Elementwise closed-form KL(q || N(0, 1)) for a factorized Normal q."""
    variance = q.scale.square()
    return 0.5 * (variance + q.loc.square() - 1) - q.scale.log()


@dataclass
class Terms:
    """Batch means of the ELBO terms; ``loss`` carries the graph for backward()."""

    loss: torch.Tensor
    reconstruction: torch.Tensor  # mean over batch and pixels (the seed's units)
    kl: torch.Tensor  # mean over batch and latent dims (the seed's units)
    recon_nats: torch.Tensor  # per image, summed over pixels
    kl_nats: torch.Tensor  # per image, summed over latent dims
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # an objective's own terms, by column

    @property
    def neg_elbo_nats(self) -> torch.Tensor:
        return self.recon_nats + self.kl_nats


def batch_kl(kl_dims: torch.Tensor, free_bits: float = 0.0) -> torch.Tensor:
    """The batch's KL per image from its elementwise KL (batch x latent): with ``free_bits`` each
    dimension's batch mean counts at least that many nats, sum_j max(lambda, mean_b KL_bj)."""
    if free_bits:
        return kl_dims.mean(0).clamp(min=free_bits).sum()
    return kl_dims.sum(-1).mean()


def backward_beta_elbo(
    q: Normal,
    logits: torch.Tensor,
    x: torch.Tensor,
    beta: float,
    likelihood: str = "bernoulli",
    weight: float = 1.0,
    free_bits: float = 0.0,
) -> torch.Tensor:
    """Accumulate the gradient of ``elbo_terms(...).loss`` without computing its value.

    Backprop starts at the logits (:func:`vaecli.models.likelihoods.logit_gradient`); this skips
    the log/exp over every pixel that only logging needs (at scheduled steps), about a tenth of a
    training step on a CPU. Tests check it against autograd. Returns the batch's weighted KL term
    (computed anyway), detached, for finiteness checks. ``weight`` (warm-up) and ``free_bits``
    (:mod:`vaecli.objectives.annealing`) change the KL term only; at 1 and 0 it is the seed's, bit for bit.
    """
    logits_grad = logit_gradient(logits, x, likelihood, 1.0 / (x.shape[0] * x.shape[-1]))
    if free_bits:
        kl_term = (beta * weight / q.loc.shape[-1]) * batch_kl(kl_to_standard_normal(q), free_bits)
    elif weight != 1.0:
        kl_term = (beta * weight / q.loc.numel()) * kl_to_standard_normal(q).sum()
    else:
        kl_term = (beta / q.loc.numel()) * kl_to_standard_normal(q).sum()
    torch.autograd.backward([logits, kl_term], [logits_grad, torch.ones_like(kl_term)])
    return kl_term.detach()


def elbo_terms(q: Normal, logits: torch.Tensor, x: torch.Tensor, beta: float, likelihood: str = "bernoulli") -> Terms:
    recon_nats = nll_sum(logits, x, likelihood) / x.shape[0]
    kl_nats = kl_to_standard_normal(q).sum(-1).mean()
    reconstruction = recon_nats / x.shape[-1]
    kl = kl_nats / q.loc.shape[-1]
    return Terms(reconstruction + beta * kl, reconstruction, kl, recon_nats, kl_nats)


def batch_metrics(terms: Terms) -> dict[str, float]:
    """A metrics row's values for one batch: one device-to-host copy for all five terms and the extras."""
    names = list(terms.extra)
    own = [torch.as_tensor(terms.extra[name], dtype=terms.loss.dtype, device=terms.loss.device) for name in names]
    values = torch.stack([terms.loss, terms.reconstruction, terms.kl, terms.recon_nats, terms.kl_nats, *own]).tolist()
    return {**terms_row(values[:5]), **dict(zip(names, values[5:]))}


def summarize(recon_nats: float, kl_nats: float, pixels: int, latent_size: int, beta: float) -> dict[str, float]:
    """Per-image nats turned into a metrics row in both units."""
    reconstruction, kl = recon_nats / pixels, kl_nats / latent_size
    return terms_row([reconstruction + beta * kl, reconstruction, kl, recon_nats, kl_nats])


@torch.inference_mode()
def evaluate(model, images: torch.Tensor, beta: float, seed: int) -> dict[str, float]:
    """Single-sample ELBO over a whole split, with fixed noise so repeated evaluations compare."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    recon_sum, kl_sum = 0.0, 0.0
    for chunk in images.split(EVAL_CHUNK):
        q = model.encoder(chunk)
        noise = torch.randn(q.loc.shape, generator=generator).to(q.loc.device)
        logits = model.decoder(q.loc + q.scale * noise).logits
        terms = elbo_terms(q, logits, chunk, beta, model.likelihood)
        recon_sum += float(terms.recon_nats) * len(chunk)
        kl_sum += float(terms.kl_nats) * len(chunk)
    return summarize(recon_sum / len(images), kl_sum / len(images), images.shape[-1], model.latent_size, beta)


@dataclass
class BetaConfig(KlScheduleConfig):
    """``objective=beta`` (conf/objective/beta.yaml): the seed's beta-ELBO; its weight is the top-level ``beta``."""

    name: str = choice(("beta",), "beta")


class BetaElbo:
    """reconstruction + beta * KL in the seed's per-dimension units (beta from the config's ``beta``),
    with warm-up, cycles and free bits on the KL term when set (at their defaults: the seed's loss)."""

    def __init__(self, cfg: Any):
        self.beta, self.likelihood = float(cfg.beta), str(cfg.model.likelihood)
        objective = cfg.get("objective") or {}
        self.warmup_steps, self.cycles = int(objective.get("warmup_steps", 0)), int(objective.get("cycles", 0))
        self.free_bits = float(objective.get("free_bits", 0.0))
        self.scheduled = schedules_kl(cfg)
        self.columns = self.columns_for(cfg)
        self.total_steps = 1

    @classmethod
    def check(cls, cfg: Any) -> None:
        check_schedule(cfg)

    @classmethod
    def columns_for(cls, cfg: Any) -> tuple[str, ...]:
        return ("kl_weight",) if schedules_kl(cfg) else ()

    def start(self, examples: int, total_steps: int, device: Any = None) -> None:
        self.total_steps = total_steps

    def weight(self, step: int) -> float:
        return kl_weight(step, self.total_steps, self.warmup_steps, self.cycles) if self.scheduled else 1.0

    def backward(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z=None, step: int = 1) -> torch.Tensor:
        return backward_beta_elbo(q, logits, x, self.beta, self.likelihood, self.weight(step), self.free_bits)

    def terms(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z=None, step: int = 1) -> Terms:
        terms = elbo_terms(q, logits, x, self.beta, self.likelihood)
        if self.scheduled or self.free_bits:
            part, terms.extra = self.loss_part(q, z, kl_to_standard_normal(q), step, x.shape[-1])
            terms.loss = terms.reconstruction + part
        return terms

    def loss_part(
        self,
        q: Normal,
        z: torch.Tensor | None,
        kl_dims: torch.Tensor,
        step: int,
        pixels: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """beta * w * KL (free bits applied) / latent_size: the loss but its reconstruction, in seed
        units, and the warm-up weight when scheduled (the batch rows' and a batched member's step)."""
        kl = batch_kl(kl_dims, self.free_bits)
        extra = {"kl_weight": torch.tensor(self.weight(step))} if self.scheduled else {}
        return self.beta * self.weight(step) * kl / q.loc.shape[-1], extra

    def after_backward(self, z: torch.Tensor, step: int) -> None:
        """Nothing of its own to update."""

    def evaluate(self, model: Any, images: torch.Tensor, seed: int, step: int = 1) -> dict[str, float]:
        row = evaluate(model, images, self.beta, seed)
        if self.scheduled:  # the test loss at this step's weight (free bits: a batch notion, not applied)
            row["loss"] = row["reconstruction"] + self.beta * self.weight(step) * row["kl"]
            row["kl_weight"] = self.weight(step)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing of its own to restore."""


OBJECTIVES.register("beta", BetaElbo, schema=BetaConfig)
