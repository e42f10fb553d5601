"""The search loop: ask a batch of trials, launch them as one Hydra batch, tell the study, repeat.

Batches let parallel launchers (joblib, submitit) run trials side by side; the study learns
from each batch before asking for the next. At the end the best trial is logged and written
to ``<sweep dir>/optimization_results.yaml`` (the file name Hydra's own Optuna plugin uses).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.utils import JobReturn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from vaecli.sweep.optuna.outcome import ObjectiveNotFound, outcome
from vaecli.sweep.optuna.space import search_space

if TYPE_CHECKING:
    from vaecli.sweep.optuna.sweeper import OptunaSweeper

log = logging.getLogger(__name__)
RESULTS_NAME = "optimization_results.yaml"


def run_search(sweeper: OptunaSweeper, arguments: Sequence[str]) -> list[Sequence[JobReturn]]:
    """Run ``sweeper.n_trials`` trials of the search that ``arguments`` and ``sweeper.params`` describe."""
    assert sweeper.config is not None and sweeper.launcher is not None
    space = search_space(arguments, sweeper.params)
    if not space.distributions:
        raise ValueError("hydra/sweeper=optuna needs something to search, e.g. 'beta=tag(log, interval(0.001, 1))'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what happens
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=sweeper.storage,
        sampler=instantiate(sweeper.sampler),
        direction=sweeper.direction,
        load_if_exists=True,
    )
    batch = batch_size(sweeper.n_jobs, sweeper.config.hydra.launcher)
    log.info(
        f"Optuna study {study.study_name}: {sweeper.n_trials} trials, batches of {batch}, "
        f"{sweeper.direction} {sweeper.objective}"
    )
    batches, job_idx = [], 0
    while job_idx < sweeper.n_trials:
        trials = [study.ask(space.distributions) for _ in range(min(batch, sweeper.n_trials - job_idx))]
        overrides = [space.overrides(trial.params) for trial in trials]
        sweeper.validate_batch_is_legal(overrides)
        jobs = sweeper.launcher.launch(overrides, initial_job_idx=job_idx)
        job_idx += len(jobs)
        told = [tell(study, *finished, sweeper.objective) for finished in zip(trials, jobs, overrides)]
        batches.append(jobs)
        if not all(told):
            log.info("the sampler has tried its whole search space; stopping")
            break
    write_results(study, sweeper, Path(sweeper.config.hydra.sweep.dir))
    return batches


def tell(study: optuna.Study, trial: optuna.Trial, job: JobReturn, overrides: list[str], objective: str) -> bool:
    """Record one finished job in the study; False when the sampler says its search space is exhausted."""
    try:
        result = outcome(job, objective)
    except ObjectiveNotFound:
        study.tell(trial, state=TrialState.FAIL)  # a stored study keeps no trial marked running
        raise
    trial.set_user_attr("overrides", overrides)
    if job.hydra_cfg is not None:
        trial.set_user_attr("output_dir", str(job.hydra_cfg.hydra.runtime.output_dir))
    if result.value is None:
        trial.set_user_attr("error", result.error)
        log.warning(f"trial {trial.number} failed: {result.error}")
    else:
        log.info(f"trial {trial.number}: {result.value:.6g}")
    try:
        if result.value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, result.value)
    except RuntimeError as error:
        # grid and brute-force samplers call study.stop() once every point is tried; outside
        # study.optimize that raises, after the trial itself has been stored
        if "Study.stop" not in str(error):
            raise
        return False
    return True


def batch_size(n_jobs: int | None, launcher: DictConfig) -> int:
    """Trials per batch: ``n_jobs`` when set, else as many as the launcher runs at once (joblib), else 1."""
    if n_jobs is not None:
        return n_jobs
    parallel = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if not isinstance(parallel, int) or parallel == 0:
        return 1
    if parallel > 0:
        return parallel
    return max(1, usable_cpus() + 1 + parallel)  # joblib: -1 is every CPU, -2 all but one, ...


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def summary(study: optuna.Study, sweeper: OptunaSweeper) -> dict[str, Any]:
    """The study in a few lines: counts, and the best trial with its overrides and folder."""
    states = [trial.state for trial in study.trials]
    done = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": sweeper.storage,
        "direction": sweeper.direction,
        "objective": sweeper.objective,
        "trials": len(states),
        "completed": states.count(TrialState.COMPLETE),
        "failed": states.count(TrialState.FAIL),
        "best_params": None,
        "best_value": None,
        "best_trial": None,
    }
    if TrialState.COMPLETE in states:
        best = study.best_trial
        done["best_params"] = dict(best.params)
        done["best_value"] = best.value
        done["best_trial"] = {"number": best.number, **best.user_attrs}
    return done


def write_results(study: optuna.Study, sweeper: OptunaSweeper, sweep_dir: Path) -> Path:
    results = summary(study, sweeper)
    if results["best_trial"] is None:
        log.warning(f"no trial completed ({results['failed']} failed); no best trial")
    else:
        log.info(f"best trial {results['best_trial']['number']}: {results['best_value']:.6g} {results['best_params']}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / RESULTS_NAME
    OmegaConf.save(OmegaConf.create(results), path)
    return path
