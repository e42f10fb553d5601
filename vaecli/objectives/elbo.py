"""The frame every objective after beta shares: the ELBO plus a regulariser, in nats per image.

An objective's loss per image is ``reconstruction_nats + w(step) * regulariser_nats`` where the
regulariser is what the paper adds to (or puts in place of) the KL, every term a per-image sum in
nats (the papers' and disentanglement_lib's units), and ``w`` the warm-up or cyclical weight
(:mod:`vaecli.objectives.annealing`). Training follows that loss divided by the pixels, which is
the seed's per-pixel scale: the same Adam settings (lr, eps) act alike on every objective, and
the ``loss`` column is in the same per-pixel units for all of them. The ELBO columns
(``recon_nats``, ``kl_nats``, ``neg_elbo_nats``) are always the true single-sample ELBO, so runs of
different objectives compare; each objective's own terms get columns of their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Normal

from vaecli.models.likelihoods import nll_sum
from vaecli.objectives.annealing import check_schedule, kl_weight, schedules_kl
from vaecli.objectives.beta import Terms, batch_kl, batch_metrics, kl_to_standard_normal

LOG_2PI = 1.8378770664093453  # log(2 pi)


def gaussian_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, scale^2), elementwise (broadcasting), in nats."""
    return -0.5 * (((z - loc) / scale).square() + LOG_2PI) - scale.log()


class RegularisedElbo:
    """Subclasses give :meth:`regulariser` (nats per image, and their own terms) and ``own_columns``."""

    own_columns: tuple[str, ...] = ()

    def __init__(self, cfg: Any):
        objective = cfg.objective
        self.likelihood, self.latent_size = str(cfg.model.likelihood), int(cfg.latent_size)
        self.batch_size = int(cfg.train.batch_size)
        self.warmup_steps, self.cycles = int(objective.warmup_steps), int(objective.cycles)
        self.free_bits = float(objective.free_bits)
        self.scheduled = schedules_kl(cfg)
        self.columns = self.columns_for(cfg)
        self.examples, self.total_steps = 0, 1

    @classmethod
    def columns_for(cls, cfg: Any) -> tuple[str, ...]:
        return cls.own_columns + (("kl_weight",) if schedules_kl(cfg) else ())

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Settings that only make sense together, checked before anything is written."""
        check_schedule(cfg)

    def start(self, examples: int, total_steps: int, device: torch.device | None = None) -> None:
        """The training set's size (the TC estimators' N) and the run's length (cyclical annealing)."""
        self.examples, self.total_steps = examples, total_steps

    def weight(self, step: int) -> float:
        return kl_weight(step, self.total_steps, self.warmup_steps, self.cycles)

    def floored_kl(self, kl_dims: torch.Tensor) -> torch.Tensor:
        """KL per image with this objective's free bits (:func:`vaecli.objectives.beta.batch_kl`)."""
        return batch_kl(kl_dims, self.free_bits)

    def regulariser(
        self, q: Normal, z: torch.Tensor, kl_dims: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss_terms(
        self,
        q: Normal,
        z: torch.Tensor,
        logits: torch.Tensor,
        x: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
    ) -> Terms:
        recon_nats = nll_sum(logits, x, self.likelihood) / x.shape[0]
        kl_dims = kl_to_standard_normal(q)
        kl_nats = kl_dims.sum(-1).mean()
        pixels = x.shape[-1]
        part, extra = self.loss_part(q, z, kl_dims, step, pixels, generator)
        reconstruction = recon_nats / pixels
        return Terms(reconstruction + part, reconstruction, kl_nats / q.loc.shape[-1], recon_nats, kl_nats, extra)

    def loss_part(
        self,
        q: Normal,
        z: torch.Tensor,
        kl_dims: torch.Tensor,
        step: int,
        pixels: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Everything of the loss but the reconstruction, in seed units (per-image nats / pixels), and the
        own terms: what the batch rows and a batched member's stacked step add to the reconstruction."""
        penalty, extra = self.regulariser(q, z, kl_dims, step, generator)
        weight = self.weight(step)
        if self.scheduled:
            extra["kl_weight"] = torch.tensor(weight)
        return weight * penalty / pixels, extra

    def backward(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z: torch.Tensor, step: int) -> torch.Tensor:
        """The loss's gradient for one batch; returns its weighted regulariser (detached) for the watch."""
        terms = self.loss_terms(q, z, logits, x, step)
        terms.loss.backward()
        self.after_backward(z, step)
        return (terms.loss - terms.reconstruction).detach()

    def after_backward(self, z: torch.Tensor, step: int) -> None:
        """An objective's own update after the model's gradient (FactorVAE's discriminator)."""

    def terms(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z: torch.Tensor, step: int) -> Terms:
        with torch.no_grad():
            return self.loss_terms(q, z, logits, x, step)

    @torch.inference_mode()
    def evaluate(self, model: Any, images: torch.Tensor, seed: int, step: int = 1) -> dict[str, float]:
        """The batch terms over a whole split, in batches of the training size (the estimators are
        batch estimators), with fixed noise: a test row in the same form as the train rows."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        chunks = max(1, len(images) // self.batch_size)  # near-equal, none smaller than a batch
        sums: dict[str, float] = {}
        for chunk in torch.tensor_split(images, chunks):
            q = model.encoder(chunk)
            noise = torch.randn(q.loc.shape, generator=generator).to(q.loc.device)
            z = q.loc + q.scale * noise
            terms = self.loss_terms(q, z, model.decoder(z).logits, chunk, step, generator)
            for key, value in batch_metrics(terms).items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
        return {key: value / len(images) for key, value in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What :meth:`state_dict` gave, from a checkpoint."""
