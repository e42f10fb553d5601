"""The metrics `vae evaluate` reports beside its bound and latent usage: each module here may register its own.

A metric is computed on the model and the images the run is evaluated on (binarised as the run's
data says), with a CPU generator of its own for any noise, and returns named figures. Each figure
goes into evaluation.json under ``metrics`` with its unit and what it measures, and into the
table `vae evaluate` prints. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vaecli.registry import Registry


@dataclass(frozen=True)
class Metric:
    compute: Callable[[Any, torch.Tensor, torch.Generator], dict[str, float]]
    unit: str  # what every figure it returns is in: "nats", "fraction", ...
    about: str  # one line: what it measures, and how


METRICS: Registry[Metric] = Registry("metric", "metric", "vaecli.measure")


def measure_all(model: Any, images: torch.Tensor, seed: int) -> dict[str, dict[str, Any]]:
    """Every registered metric on ``images``, each from its own generator seeded from ``seed``."""
    found = {}
    for number, name in enumerate(METRICS.names()):
        metric = METRICS.entry(name)
        generator = torch.Generator().manual_seed(seed + 1000 + number)
        with torch.inference_mode():
            values = {key: float(value) for key, value in metric.compute(model, images, generator).items()}
        found[name] = {"values": values, "unit": metric.unit, "about": metric.about}
    return found
