"""The objectives ``objective=<name>`` picks from: each module of this folder registers its own.

An objective is built from a run's config and gives the loop three things: ``backward(q, logits, x)``
accumulates the gradient of its loss for one batch (returning the batch's KL term, detached, for
the divergence watch), ``terms(q, logits, x)`` the batch's row terms (:class:`vaecli.objectives.beta.Terms`,
``loss`` in the objective's own units, the ELBO columns in nats per image), and
``evaluate(model, images, seed, step)`` a test row over a whole split. ``z`` is the batch's codes
and ``step`` the 1-based step. Optional: ``columns`` (its own terms, extra metrics columns),
``start(examples, total_steps, device)`` before the first step, ``state_dict()`` and
``load_state_dict()`` for what it keeps between steps (a checkpoint holds it), and a classmethod
``check(cfg)`` run before anything is written. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.distributions import Normal

from vaecli.registry import Registry


class Objective(Protocol):
    columns: tuple[str, ...]  # its own terms' metrics columns, after the ELBO columns

    def backward(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z: torch.Tensor, step: int) -> Any: ...

    def terms(self, q: Normal, logits: torch.Tensor, x: torch.Tensor, *, z: torch.Tensor, step: int) -> Any: ...

    def evaluate(self, model: torch.nn.Module, images: torch.Tensor, seed: int, step: int) -> dict[str, float]: ...


OBJECTIVES: Registry[Callable[[Any], Objective]] = Registry(
    "objective", "objective.name", "vaecli.objectives", group="objective"
)


def build_objective(cfg: Any) -> Objective:
    """The objective a run's config names (a config from before the registry trains the beta-ELBO)."""
    return objective_class(cfg)(cfg)


def objective_class(cfg: Any) -> Any:
    return OBJECTIVES.entry(str(cfg.objective.name) if "objective" in cfg else "beta")


def objective_columns(cfg: Any) -> tuple[str, ...]:
    """The metrics columns an objective adds (known from the config, before anything is built)."""
    columns_for = getattr(objective_class(cfg), "columns_for", None)
    return tuple(columns_for(cfg)) if columns_for is not None else ()


def check_objective(cfg: Any) -> None:
    """The objective's own checks of settings that only make sense together (one line, before any write)."""
    check = getattr(objective_class(cfg), "check", None)
    if check is not None:
        check(cfg)


def start_objective(objective: Any, examples: int, total_steps: int, device: torch.device) -> None:
    start = getattr(objective, "start", None)
    if start is None:
        return
    try:
        start(examples, total_steps, device)
    except TypeError:  # an objective whose start() takes no device
        start(examples, total_steps)


SCHEDULE_KEYS = ("warmup_steps", "cycles", "free_bits")  # every objective's; named only when set


def describe_objective(cfg: Any) -> str:
    """What a run optimised, for a figure's title: ``beta=0.01``, or ``objective=tcvae alpha=1.0 beta=6.0 ...``
    (the top-level beta only where it is used; the discriminator's architecture left out)."""
    objective = cfg.get("objective") or {}
    name = str(objective.get("name", "beta"))
    settings = [
        f"{key}={value}"
        for key, value in objective.items()
        if key != "name" and not key.startswith("disc_") and value is not None and (key not in SCHEDULE_KEYS or value)
    ]
    return " ".join([f"beta={cfg.beta}" if name == "beta" else f"objective={name}", *settings])
