"""Typed configuration: the schema Hydra checks overrides against, and the value rules.

Hydra/OmegaConf reject unknown keys and wrong types; :func:`check_values` rejects values that
type-check but make no sense (a negative beta, an empty batch), each with a one-line reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from vaecli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
TRAIN_ON = ("train", "all")
LOGGERS = ("csv", "tensorboard")
DATA_ROOT_ENV = "VAECLI_DATA"
DEFAULT_DATA_ROOT = "~/.cache/vaecli"
# train.checkpoint_every=null saves a checkpoint after about this much training time: a hard kill
# (SIGKILL, out of memory, a lost node) loses at most about a minute, whatever the model and device
AUTO_CHECKPOINT_SECONDS = 60.0


NOT_HELD_OUT = (
    "data.train_on=all trains on the test images too: the test rows are not held-out figures "
    "(held_out=false in metrics.csv and sweep.csv)"
)


def test_held_out(cfg: Any) -> bool:
    """Whether the test split is unseen in training (``data.train_on=all`` trains on it too)."""
    return cfg.data.train_on != "all"


def default_root() -> Path:
    """The data root a config gets when none is given: ``$VAECLI_DATA`` or ``~/.cache/vaecli``."""
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)).expanduser()


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = f"${{oc.env:{DATA_ROOT_ENV},'{DEFAULT_DATA_ROOT}'}}"
    train_on: str = "train"  # 'all' trains on all 70,000 images (train + test), as the seed does
    limit: int | None = None  # use only the first N training images
    test_limit: int | None = None  # evaluate on the first N test images only


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])
    min_scale: float = 1e-4  # floor under the posterior scale


@dataclass
class TrainConfig:
    steps: int = 1024
    epochs: float | None = None  # when set, wins over steps
    batch_size: int = 64
    lr: float = 1e-3
    shuffle: bool = True  # reshuffle every epoch; false reproduces the seed's fixed batch order
    eval_every: int | None = None  # None: test evaluations at 1, 4, 16, ... and the end; N: every N; 0: at the end
    progress: bool = True
    # steps between checkpoints; null: about every AUTO_CHECKPOINT_SECONDS (60 s) of training; 0: at the end only
    checkpoint_every: int | None = None


@dataclass
class LoggerConfig:
    # csv: metrics.csv and the PNGs only; tensorboard: also TensorBoard events in <run>/tb (vaecli[tensorboard])
    name: str = MISSING


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    beta: float = 0.01  # weight of the KL term, in the seed's per-dimension units
    latent_size: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = 0  # torch threads; 0 = the CPUs this run may use, shared among parallel members


def register() -> None:
    ConfigStore.instance().store(name="vaecli_schema", node=Config)


class ConfigValueError(UsageError):
    """A value that type-checks but cannot be used; the message names the key."""


def check_values(cfg: Any) -> None:
    """Raise :class:`ConfigValueError` naming the first key whose value is impossible."""
    for key, value in float_settings(cfg):
        if not math.isfinite(value):
            raise ConfigValueError(f"{key}={value} is not allowed: {key} must be a finite number")
    rules: list[tuple[str, bool, str]] = [
        ("beta", cfg.beta >= 0, "must be >= 0 (0 gives a plain autoencoder)"),
        ("latent_size", cfg.latent_size >= 1, "must be a whole number >= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        ("train.lr", cfg.train.lr > 0, "must be > 0"),
        ("train.steps", cfg.train.steps >= 1, "must be >= 1"),
        (
            "train.epochs",
            cfg.train.epochs is None or cfg.train.epochs > 0,
            "must be > 0 (or null to use train.steps)",
        ),
        (
            "train.eval_every",
            cfg.train.eval_every is None or cfg.train.eval_every >= 0,
            "must be >= 0 or null",
        ),
        (
            "train.checkpoint_every",
            cfg.train.checkpoint_every is None or cfg.train.checkpoint_every >= 0,
            "must be >= 0 (0: at the end only) or null (about every minute)",
        ),
        (
            "model.hidden_sizes",
            all(size >= 1 for size in cfg.model.hidden_sizes),
            "sizes must be >= 1",
        ),
        ("model.min_scale", cfg.model.min_scale > 0, "must be > 0"),
        ("device", cfg.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
        ("threads", cfg.threads >= 0, "must be >= 0 (0 = automatic)"),
        ("logger.name", cfg.logger.name in LOGGERS, f"must be one of {', '.join(LOGGERS)}"),
        ("data.train_on", cfg.data.train_on in TRAIN_ON, f"must be one of {', '.join(TRAIN_ON)}"),
        ("data.limit", cfg.data.limit is None or cfg.data.limit >= 1, "must be >= 1 or null"),
        (
            "data.test_limit",
            cfg.data.test_limit is None or cfg.data.test_limit >= 1,
            "must be >= 1 or null",
        ),
    ]
    for key, ok, rule in rules:
        if not ok:
            value = _select(cfg, key)
            raise ConfigValueError(f"{key}={value} is not allowed: {key} {rule}")


def float_settings(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every float in the run's config (``hydra.*`` aside), keys dotted: ``train.lr``, ``+foo=...`` too."""
    from omegaconf import DictConfig, ListConfig

    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    found: list[tuple[str, float]] = []
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{name}"
        if key == "hydra":
            continue
        if isinstance(value, DictConfig | ListConfig):
            found += float_settings(value, key)
        elif isinstance(value, float):
            found.append((key, value))
    return found


def _select(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node
