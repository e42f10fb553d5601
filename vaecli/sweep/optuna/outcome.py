"""What a finished job tells the study: the objective's value, or why the trial failed.

A task reports its objective by what it returns. A number is the objective itself (any Hydra
app); a mapping (vaecli's task returns its result) is read at the sweeper's ``objective`` path,
e.g. ``final.test.neg_elbo_nats``, unless its ``status`` says it failed. A job that raised, a
NaN or infinite value, or anything else fails the trial, and the search goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn


class ObjectiveNotFound(ValueError):
    """A successful result without the configured objective: a setup error, so the search stops."""


@dataclass(frozen=True)
class Outcome:
    value: float | None  # None: the trial failed
    error: str | None = None


def outcome(job: JobReturn, objective: str) -> Outcome:
    try:
        returned = job.return_value  # re-raises what the task raised
    except Exception as error:  # any task error is that trial's failure
        return Outcome(None, f"{type(error).__name__}: {error}")
    if isinstance(returned, Mapping):
        status = returned.get("status", "ok")
        if status != "ok":
            return Outcome(None, str(returned.get("error") or f"status {status}"))
        returned = lookup(returned, objective)
    if isinstance(returned, bool) or not isinstance(returned, int | float):
        return Outcome(None, f"the task returned {returned!r}, not a number")
    if not math.isfinite(returned):
        return Outcome(None, f"the objective is {returned}")
    return Outcome(float(returned))


def lookup(result: Mapping[str, Any], path: str) -> Any:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            keys = ", ".join(sorted(map(str, node))) if isinstance(node, Mapping) else type(node).__name__
            raise ObjectiveNotFound(f"hydra.sweeper.objective={path}: no '{part}' in the task's result (has: {keys})")
        node = node[part]
    return node
