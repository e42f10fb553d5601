"""The adapter Hydra's plugin scan finds: vaecli's Optuna sweeper (:mod:`vaecli.sweep.optuna`) and its config nodes.

Hydra keys a plugin by the module that defines its class and takes only classes defined under
``hydra_plugins``, so the class is subclassed here; all of its behaviour is vaecli's.
"""

from vaecli.sweep.optuna import sweeper

from .config import OptunaSweeperConf  # noqa: F401  (importing it registers the config nodes)


class OptunaSweeper(sweeper.OptunaSweeper):
    """``hydra/sweeper=optuna``: :class:`vaecli.sweep.optuna.sweeper.OptunaSweeper`."""
