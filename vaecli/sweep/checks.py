"""Every sweeper and launcher setting checked with the rest of the config, before any folder exists.

Hydra's launchers and Optuna read their settings only when they start, which is after the sweep's
folder and its members' folders exist: a bad value there left a folder of failed members, a
traceback, or (a misspelt objective) a finished search that exited 0. Each rule here names the
key and what it takes, in one line (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vaecli.errors import UsageError
from vaecli.objectives.terms import TERM_NAMES

DIRECTIONS = ("minimize", "maximize")

# hydra.launcher.<key>: (the rule, what it takes); checked for whichever launcher has the key
LAUNCHER_RULES: dict[str, tuple[Any, str]] = {
    "n_jobs": (lambda v: v is None or v != 0, "must be a whole number other than 0 (-1: one member per CPU)"),
    "max_group": (lambda v: v >= 1, "must be >= 1"),
    "timeout_min": (lambda v: v > 0, "must be > 0 (minutes)"),
    "cpus_per_task": (lambda v: v is None or v >= 1, "must be >= 1"),
    "gpus_per_node": (lambda v: v is None or v >= 0, "must be >= 0"),
    "tasks_per_node": (lambda v: v >= 1, "must be >= 1"),
    "nodes": (lambda v: v >= 1, "must be >= 1"),
    "mem_gb": (lambda v: v is None or v > 0, "must be > 0"),
    "max_num_timeout": (lambda v: v >= 0, "must be >= 0"),
    "signal_delay_s": (lambda v: v >= 0, "must be >= 0"),
    "array_parallelism": (lambda v: v >= 1, "must be >= 1"),
}


def check_launcher(composed: Any) -> None:
    launcher = OmegaConf.select(composed, "hydra.launcher")
    if launcher is None:
        return
    for key, (ok, rule) in LAUNCHER_RULES.items():
        if key in launcher and not ok(launcher[key]):
            raise UsageError(f"hydra.launcher.{key}={launcher[key]} is not allowed: hydra.launcher.{key} {rule}")


def objective_paths(cfg: Any) -> list[str]:
    """What vaecli's task returns that a search can optimise (``hydra.sweeper.objective``)."""
    paths = [f"final.{split}.{term}" for split in ("test", "train") for term in TERM_NAMES]
    paths += ["train_seconds"]
    if int(OmegaConf.select(cfg, "eval.iwae_k") or 0) > 0:
        bound = ("nll_bound_nats", "neg_elbo_nats", "recon_nats", "kl_nats", "nll_bound_bits_per_dim")
        latents = ("active_units", "kl_nats", "mutual_information_nats", "mutual_information_bounded_nats")
        paths += [f"evaluation.bound.{key}" for key in bound] + [f"evaluation.latents.{key}" for key in latents]
    return paths


def check_optuna(composed: Any) -> None:
    """hydra/sweeper=optuna's settings: trials, batch size, direction, objective, storage."""
    sweeper = composed.hydra.sweeper
    if int(sweeper.n_trials) < 1:
        raise UsageError(f"hydra.sweeper.n_trials={sweeper.n_trials} is not allowed: a search runs at least 1 trial")
    if sweeper.n_jobs is not None and int(sweeper.n_jobs) < 1:
        raise UsageError(f"hydra.sweeper.n_jobs={sweeper.n_jobs} is not allowed: it must be >= 1 (or null)")
    if sweeper.direction not in DIRECTIONS:
        raise UsageError(f"hydra.sweeper.direction={sweeper.direction} is not one of {', '.join(DIRECTIONS)}")
    known = objective_paths(composed)
    if sweeper.objective not in known:
        hint = "" if int(composed.eval.iwae_k) else "; evaluation.bound.* needs eval.iwae_k > 0"
        raise UsageError(
            f"hydra.sweeper.objective={sweeper.objective} is not a figure a run returns: use one of "
            f"{', '.join(known[:6])}, ... (final.test.* and final.train.* for every metrics column){hint}"
        )
    if sweeper.storage is not None:
        check_storage(str(sweeper.storage))


def check_storage(url: str) -> None:
    """An Optuna storage URL that SQLAlchemy parses; a SQLite file's folder must exist."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        parsed.get_dialect()  # an unknown database, or one whose driver is not installed
    except Exception:  # sqlalchemy's ArgumentError, or no sqlalchemy: either way unusable
        raise UsageError(f"hydra.sweeper.storage={url} is not a database URL; use e.g. sqlite:///optuna.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().absolute().parent
        if not folder.is_dir():
            raise UsageError(f"hydra.sweeper.storage={url}: the folder {folder} does not exist; create it first")


def check_sweep_dir(composed: Any) -> None:
    if not str(composed.hydra.sweep.dir).strip():
        raise UsageError("hydra.sweep.dir is empty: name a folder for the sweep (or leave the default)")
