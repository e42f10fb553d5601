"""The models ``model=<name>`` picks from: each module of this folder registers its own.

A model is a ``torch.nn.Module`` built from a run's config that the loop, the checkpoints and
every picture command use through one small surface: ``encoder(x)`` gives q(z|x) as a
``torch.distributions.Normal``, ``decoder(z)`` gives p(x|z) with its ``logits``, ``forward(x)``
gives (q, z, p), and it has ``latent_size``, ``likelihood`` and ``prior()``. See docs/extending.md.
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
