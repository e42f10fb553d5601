"""The sweeper's config nodes: ``hydra/sweeper=optuna`` and its samplers ``hydra/sweeper/sampler=tpe|random``.

No ``from __future__ import annotations`` here: Hydra's plugin scan runs this module before it
is in ``sys.modules``, where dataclasses cannot resolve string annotations, and an error in a
scanned module breaks every Hydra run in the environment, not only sweeps.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

DEFAULT_OBJECTIVE = "final.test.neg_elbo_nats"


@dataclass
class TPESamplerConf:
    """Optuna's default sampler; constant_liar keeps trials asked in one parallel batch apart."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class OptunaSweeperConf:
    """What to search and how; the search space comes from sweep overrides and ``params``."""

    _target_: str = "hydra_plugins.vaecli_optuna_sweeper.optuna_sweeper.OptunaSweeper"  # the adapter
    _recursive_: bool = False  # the sweeper builds the sampler itself, after checking Optuna is installed
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    objective: str = DEFAULT_OBJECTIVE  # dotted path into the task's returned mapping, or the returned number
    direction: str = "minimize"  # minimize | maximize
    n_trials: int = 20
    n_jobs: int | None = None  # trials per batch; null: the launcher's n_jobs (joblib), else 1
    storage: str | None = None  # e.g. sqlite:///optuna.db to keep and resume a study; null: in memory
    study_name: str | None = None
    params: dict[str, str] | None = None  # search space in a config file: key -> sweep, as on the command line


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="vaecli")
    store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="vaecli")
    store.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="vaecli")


register()
