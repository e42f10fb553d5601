"""The objectives ``objective=<name>`` picks from: each module of this folder registers its own.

An objective is built from a run's config and gives the loop three things: ``backward(q, logits, x)``
accumulates the gradient of its loss for one batch (returning the batch's KL term, detached, for
the divergence watch), ``terms(q, logits, x)`` the batch's row terms (:class:`vaecli.objectives.beta.Terms`,
``loss`` in the objective's own units, the ELBO columns in nats per image), and
``evaluate(model, images, seed)`` a test row over a whole split. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.distributions import Normal

from vaecli.registry import Registry


class Objective(Protocol):
    def backward(self, q: Normal, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...

    def terms(self, q: Normal, logits: torch.Tensor, x: torch.Tensor) -> Any: ...

    def evaluate(self, model: torch.nn.Module, images: torch.Tensor, seed: int) -> dict[str, float]: ...


OBJECTIVES: Registry[Callable[[Any], Objective]] = Registry(
    "objective", "objective.name", "vaecli.objectives", group="objective"
)


def build_objective(cfg: Any) -> Objective:
    """The objective a run's config names (a config from before the registry trains the beta-ELBO)."""
    name = str(cfg.objective.name) if "objective" in cfg else "beta"
    return OBJECTIVES.entry(name)(cfg)
