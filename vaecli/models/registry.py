"""The models ``model=<name>`` picks from: each module of this folder registers its own.

A model is a ``torch.nn.Module`` built from a run's config that the loop, the checkpoints and
every picture command use through one small surface: ``encoder(x)`` gives q(z|x) as a
``torch.distributions.Normal``, ``decoder(z)`` gives p(x|z) with its ``logits``, ``forward(x)``
gives (q, z, p), and it has ``latent_size``, ``likelihood`` and ``prior()``; it may have
``initialise_from_data(images)``, called once with the training images before a new run's first
step. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vaecli.registry import Registry

MODELS: Registry[Callable[[Any], torch.nn.Module]] = Registry("model", "model.name", "vaecli.models", group="model")


def build_model(cfg: Any) -> torch.nn.Module:
    """The model a run's config describes (a composed config or one stored in a checkpoint)."""
    return MODELS.entry(str(cfg.model.get("name", "mlp")))(cfg)


def initialise_from_data(model: torch.nn.Module, images: torch.Tensor) -> None:
    """A new model's data-dependent start (a model without ``initialise_from_data`` has none)."""
    hook = getattr(model, "initialise_from_data", None)
    if hook is not None:
        hook(images)
