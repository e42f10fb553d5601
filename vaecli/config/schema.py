"""Typed configuration: the schema Hydra checks overrides against, and the value rules.

Hydra/OmegaConf reject unknown keys and wrong types; :func:`check_values` rejects values that
type-check but make no sense (a negative beta, an empty batch), each with a one-line reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from vaecli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
TRAIN_ON = ("train", "all")
LOGGERS = ("csv", "tensorboard")
BINARIZE = ("none", "dynamic", "static")  # vaecli.data.tensors
LR_SCHEDULES = ("constant", "staged")  # vaecli.run.schedules
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
    binarize: str = "none"  # none: grey levels | dynamic: a fresh draw per batch | static: one fixed draw


def rule(check: Callable[[Any], bool], text: str, **default: Any) -> Any:
    """A schema field with its value rule beside its default: ``rule(lambda v: v > 0, "must be > 0", default=1.0)``.

    The config group schemas of registered models and objectives carry their rules this way, so
    :func:`check_values` checks them without knowing those schemas.
    """
    return field(metadata={"check": check, "rule": text}, **default)


def choice(options: tuple[str, ...], default: str) -> Any:
    """A schema field that takes one of ``options``."""
    return rule(lambda value: value in options, f"must be one of {', '.join(options)}", default=default)


@dataclass
class LrScheduleConfig:
    name: str = "constant"  # staged: stage i lasts first_epochs * growth**i epochs at lr * decay**i
    stages: int = 8
    first_epochs: float = 1.0
    growth: float = 3.0
    decay: float = 0.7196856730011519  # 10 ** (-1 / 7), Burda et al.


@dataclass
class TrainConfig:
    steps: int = 1024
    epochs: float | None = None  # when set, wins over steps
    batch_size: int = 64
    lr: float = 1e-3
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8  # acts on the seed-units gradient (see conf/experiment/burda2016.yaml)
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)
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
class EvalConfig:
    iwae_k: int = 0  # importance samples of the test-set bound at the end of training; 0: off
    latents_per_pass: int = 1024  # memory bound of that evaluation (latents decoded at once)
    mi_batch: int | None = None  # images per mixture in the I(x; z) estimate; null: all evaluated images
    disentanglement: bool = False  # at the end of training, `vae evaluate --disentanglement` (data=dsprites)
    fast_dci: bool = False  # with it, DCI's fast learner (20 boosting stages at rate 0.5, named so)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING  # the schema of the chosen model (conf/model/<name>.yaml, vaecli.models.registry)
    objective: Any = MISSING  # the schema of the chosen objective (conf/objective/<name>.yaml)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    beta: float = 0.01  # weight of the KL term, in the seed's per-dimension units
    latent_size: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = 0  # torch threads; 0 = the CPUs this run may use, shared among parallel members


# keys added after checkpoints were first written (issue 10); an older stored config gets their defaults,
# which keep the seed's behaviour: grey levels, a Bernoulli decoder, ReLU, torch's Adam, no bound
LATER_KEYS = (
    "model.name",
    "objective",
    "data.binarize",
    "model.likelihood",
    "model.activation",
    "train.adam_betas",
    "train.adam_eps",
    "train.lr_schedule",
    "eval",
)


# defaults of later keys that the schema leaves to a config group (a checkpoint from before the registries)
LATER_DEFAULTS = {"model.name": "mlp", "objective": {"name": "beta"}}

# keys added since runs were first hashed, at the values that mean what a run from before them did:
# left out of config_hash there, so such a run keeps its hash (and a sweep does not train it again)
NEUTRAL_VALUES = {
    "model.name": "mlp",
    "model.init": "seed",
    "model.scale": "softplus",
    "model.output_bias": "zero",
    "objective.name": "beta",
    "objective.warmup_steps": 0,
    "objective.cycles": 0,
    "objective.free_bits": 0.0,
    "eval.disentanglement": False,
    "eval.fast_dci": False,
}


def register() -> None:
    ConfigStore.instance().store(name="vaecli_schema", node=Config)


def with_later_keys(stored: dict) -> DictConfig:
    """A stored config (a checkpoint's) with :data:`LATER_KEYS` it lacks set to their defaults.

    Only keys whose section is there are added: a config missing whole sections stays as broken as it is.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(stored)
    defaults = OmegaConf.structured(Config)
    for key in LATER_KEYS:
        section = key.rpartition(".")[0]
        if OmegaConf.select(cfg, key) is None and (not section or OmegaConf.select(cfg, section) is not None):
            if key not in LATER_DEFAULTS and OmegaConf.is_missing(defaults, key.partition(".")[0]):
                continue  # a key of a group's own schema: the group's registry fills it (Registry.with_defaults)
            value = LATER_DEFAULTS[key] if key in LATER_DEFAULTS else OmegaConf.select(defaults, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


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
        ("data.binarize", cfg.data.binarize in BINARIZE, f"must be one of {', '.join(BINARIZE)}"),
        (
            "train.adam_betas",
            len(cfg.train.adam_betas) == 2 and all(0 <= b < 1 for b in cfg.train.adam_betas),
            "must be two numbers in [0, 1)",
        ),
        ("train.adam_eps", cfg.train.adam_eps > 0, "must be > 0"),
        (
            "train.lr_schedule.name",
            cfg.train.lr_schedule.name in LR_SCHEDULES,
            f"must be one of {', '.join(LR_SCHEDULES)}",
        ),
        ("train.lr_schedule.stages", cfg.train.lr_schedule.stages >= 1, "must be >= 1"),
        ("train.lr_schedule.first_epochs", cfg.train.lr_schedule.first_epochs > 0, "must be > 0"),
        ("train.lr_schedule.growth", cfg.train.lr_schedule.growth >= 1, "must be >= 1"),
        ("train.lr_schedule.decay", 0 < cfg.train.lr_schedule.decay <= 1, "must be in (0, 1]"),
        ("eval.iwae_k", cfg.eval.iwae_k >= 0, "must be >= 0 (0 = no bound at the end of training)"),
        ("eval.latents_per_pass", cfg.eval.latents_per_pass >= 1, "must be >= 1"),
        ("eval.mi_batch", cfg.eval.mi_batch is None or cfg.eval.mi_batch >= 2, "must be >= 2 or null"),
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
    rules += schema_rules(cfg)
    for key, ok, text in rules:
        if not ok:
            value = _select(cfg, key)
            raise ConfigValueError(f"{key}={value} is not allowed: {key} {text}")


def schema_rules(node: Any, prefix: str = "") -> list[tuple[str, bool, str]]:
    """The rules that schema fields carry (:func:`rule`), evaluated on ``node`` and the nodes under it."""
    from omegaconf import DictConfig, OmegaConf

    found: list[tuple[str, bool, str]] = []
    kind = OmegaConf.get_type(node)
    if kind is not None and is_dataclass(kind):
        for item in fields(kind):
            if "check" in item.metadata and item.name in node:
                found.append(
                    (f"{prefix}{item.name}", bool(item.metadata["check"](node[item.name])), item.metadata["rule"])
                )
    for name, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else ():
        if isinstance(value, DictConfig) and name != "hydra":
            found += schema_rules(value, f"{prefix}{name}.")
    return found


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
