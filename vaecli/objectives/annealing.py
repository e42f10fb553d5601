"""What every objective can do to its KL-type terms: warm it up, cycle it, and floor it (free bits).

- Warm-up (Bowman et al. 2016): the weight of everything but the reconstruction rises linearly
  from 0 to 1 over ``warmup_steps`` steps.
- Cyclical annealing (Fu et al. 2019): the run's steps split into ``cycles`` equal cycles; in
  each the weight rises linearly from 0 to 1 over the first half (their R = 0.5), then stays at 1.
- Free bits (Kingma et al. 2016): each latent dimension's KL, averaged over the batch, counts at
  least ``free_bits`` nats: sum_j max(lambda, mean_b KL_bj). The ELBO columns keep the true KL.

Torch-free: the weight is a float of the step, the same in the solo loop and its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vaecli.config.schema import rule
from vaecli.errors import UsageError

CYCLE_RISE = 0.5  # Fu et al.'s R: the share of each cycle over which the weight rises
MIN_CYCLE_STEPS = 4  # a shorter cycle would hold the weight at 0 (or barely above) throughout


@dataclass
class KlScheduleConfig:
    """Settings every objective's schema carries (its dataclass subclasses this one)."""

    warmup_steps: int = rule(lambda value: value >= 0, "must be >= 0 (0: no warm-up)", default=0)
    cycles: int = rule(lambda value: value >= 0, "must be >= 0 (0: no cyclical annealing)", default=0)
    free_bits: float = rule(lambda value: value >= 0, "must be >= 0 nats per dimension (0: none)", default=0.0)


def kl_weight(step: int, total_steps: int, warmup_steps: int = 0, cycles: int = 0) -> float:
    """The weight on an objective's KL-type terms at ``step`` (1-based) of ``total_steps``."""
    if cycles:
        period = math.ceil(total_steps / cycles)
        position = ((step - 1) % period) / (total_steps / cycles)
        return min(1.0, position / CYCLE_RISE)
    if warmup_steps:
        return min(1.0, step / warmup_steps)
    return 1.0


def schedules_kl(cfg: Any) -> bool:
    """Whether the KL weight moves during the run (a ``kl_weight`` column then shows it)."""
    objective = cfg.get("objective", {}) if hasattr(cfg, "get") else {}
    return bool(objective.get("warmup_steps", 0) or objective.get("cycles", 0))


def check_schedule(cfg: Any) -> None:
    """One schedule at a time: warm-up and cycles both set is refused in one line."""
    objective = cfg.objective
    if objective.get("warmup_steps", 0) and objective.get("cycles", 0):
        raise UsageError(
            f"objective.warmup_steps={objective.warmup_steps} and objective.cycles={objective.cycles} "
            "are two schedules for one KL weight: set one of them (the other to 0)"
        )
    cycles, steps = int(objective.get("cycles", 0)), cfg.train.get("steps")
    if cycles and cfg.train.get("epochs") is None and steps is not None and cycles > int(steps) // MIN_CYCLE_STEPS:
        raise UsageError(
            f"objective.cycles={cycles} over train.steps={steps} leaves cycles under {MIN_CYCLE_STEPS} steps, "
            f"whose weight never leaves 0; use objective.cycles={max(1, int(steps) // MIN_CYCLE_STEPS)} or fewer"
        )
