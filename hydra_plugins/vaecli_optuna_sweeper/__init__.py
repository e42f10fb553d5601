"""vaecli's Optuna sweeper for Hydra: ``hydra/sweeper=optuna`` on current Optuna.

Same override syntax as Hydra's published hydra-optuna-sweeper (``tag(log, interval(a, b))``,
``interval``, ``range``, ``choice``), written anew because that plugin pins optuna<3 (2.10.1,
from 2021), reads ``range(a, b)`` as including ``b``, aborts the whole search when a trial
returns NaN, and needs sqlalchemy<2 with alembic<1.14 for a database storage. Hydra finds it by
plugin discovery: ``hydra_plugins`` is a namespace package that every plugin distribution adds to.
The search itself lives in :mod:`vaecli.sweep.optuna`; this package is the adapter Hydra finds.
Optuna is imported only when this sweeper runs, never on a plain ``vae train``.
"""
