"""``hydra/sweeper=optuna``: a :class:`~hydra.plugins.sweeper.Sweeper` that checks its settings and defers to
:mod:`vaecli.sweep.optuna.study`; Hydra finds it through ``hydra_plugins/vaecli_optuna_sweeper``."""

from __future__ import annotations

import importlib.util
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

DIRECTIONS = ("minimize", "maximize")
INSTALL_HINT = "pip install 'vaecli[optuna]'"


def optuna_installed() -> bool:
    try:
        return importlib.util.find_spec("optuna") is not None
    except (ImportError, ValueError):  # ValueError: blocked as None in sys.modules
        return False


class OptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs them through the configured launcher in batches, tells it the results."""

    def __init__(
        self,
        sampler: DictConfig,
        objective: str,
        direction: str,
        n_trials: int,
        n_jobs: int | None,
        storage: str | None,
        study_name: str | None,
        params: DictConfig | None,
    ) -> None:
        if not optuna_installed():
            raise ImportError(f"hydra/sweeper=optuna needs optuna, which is not installed: {INSTALL_HINT}")
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction={direction} is not allowed: use minimize or maximize")
        if n_trials < 1 or (n_jobs is not None and n_jobs < 1):
            raise ValueError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        self.sampler = sampler
        self.objective = objective
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.storage = storage
        self.study_name = study_name
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from vaecli.sweep.optuna.study import run_search

        return run_search(self, arguments)
