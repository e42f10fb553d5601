"""`vae sweep ... hydra/launcher=batched`: every compatible group of members trained as one stacked model.

Hydra finds this launcher through ``hydra_plugins/vaecli_batched_launcher``, a thin adapter its
plugin discovery imports, as it finds joblib's and submitit's. Members that may share a model
(they differ only in ``beta``, ``seed`` and ``latent_size``: :mod:`vaecli.sweep.batched.groups`)
are trained together, at most
``max_group`` at a time, in this process with every usable CPU; each keeps its own batch order
and noise, so it learns what it would learn alone. Every member is still an ordinary run folder:
Hydra's ``run_job`` sets it up (``.hydra/``, train.log) and, after the group's last step, runs the
member's task that writes checkpoint.pt, the figures and result.json (:mod:`vaecli.sweep.batched.members`).

Members that already completed with the same config are skipped by the ordinary task, as with any
launcher. Stopping and resuming work as under the other launchers (:mod:`vaecli.run.signals`): a first
SIGINT/SIGTERM (or the sweep's stop file) ends the running group after its current step, each
unfinished member writes its checkpoint and result.json "interrupted", the groups not yet started
do not start (their members record it as the ordinary task does), and `vae sweep` writes
sweep.csv and exits 128 + the signal. Running the sweep again continues interrupted (or killed)
members from their checkpoints; members continuing from the same step share a group. A second
Ctrl-C leaves at once.

This module is imported by every Hydra app in the environment (plugin discovery, through the
adapter), so it imports torch and the rest of vaecli only when a sweep launches.
"""

import copy
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    # Hydra takes a plugin only from hydra_plugins: the adapter there subclasses BatchedLauncher below
    _target_: str = "hydra_plugins.vaecli_batched_launcher.batched_launcher.BatchedLauncher"
    # the most members trained as one stacked model (memory grows with it); a larger set of compatible
    # members is split into near-equal groups
    max_group: int = 16


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="vaecli")


@dataclass
class Job:
    """One member as the launcher sees it: Hydra's config for it, its task config and its folder."""

    idx: int
    overrides: list[str]
    config: DictConfig  # with the hydra node, as run_job takes it
    cfg: DictConfig  # without it, as the task gets it
    out_dir: Path
    resume_step: int = 0  # the step its checkpoint lets it continue from (0: it starts afresh)

    @property
    def name(self) -> str:
        return self.out_dir.name


def remember_sweep_configs(loader: Any) -> None:
    """Compose each member once: the sweeper checks every member's config (``validate_batch_is_legal``)
    just before :meth:`BatchedLauncher.launch`, in this process, and the launcher needs the same
    configs again. Composing one costs ~0.15 s, so this loader keeps a copy of each until it is
    asked for it a second time (a long Optuna search keeps none it has launched)."""
    if getattr(loader, "_vaecli_remembers", False):
        return
    compose, kept = loader.load_sweep_config, {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in kept:
            return kept.pop(key)[1]
        config = compose(master_config, list(sweep_overrides))
        kept[key] = (master_config, copy.deepcopy(config))  # the master kept too: its id stays its own
        return config

    loader.load_sweep_config, loader._vaecli_remembers = load_sweep_config, True


class BatchedLauncher(Launcher):
    def __init__(self, max_group: int) -> None:
        self.max_group = int(max_group)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        remember_sweep_configs(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vaecli.runfolder import lock

        assert self.config is not None and self.task_function is not None
        if self.max_group < 1:
            raise ValueError(f"hydra.launcher.max_group={self.max_group} is not allowed: it must be >= 1")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = [self.job(initial_job_idx + k, overrides) for k, overrides in enumerate(job_overrides)]
        busy = self.lock_members(jobs)  # every member's folder locked before it is read: busy ones are done
        try:
            return self.launch_locked(jobs, dict(busy), sweep_dir)
        finally:
            for k, job in enumerate(jobs):
                if k not in busy:
                    lock.release(job.out_dir)

    def lock_members(self, jobs: list[Job]) -> dict[int, JobReturn]:
        """Each member's folder lock for the whole launch; a member whose folder another process holds
        is not run and ends "failed", as under the basic launcher (nothing in its folder touched)."""
        from vaecli.run.task import MEMBER_LOCK_WAIT_S
        from vaecli.runfolder import lock

        busy: dict[int, JobReturn] = {}
        for k, job in enumerate(jobs):
            try:
                job.out_dir.mkdir(parents=True, exist_ok=True)
                lock.acquire(job.out_dir, wait_s=MEMBER_LOCK_WAIT_S)
            except lock.FolderBusy as error:
                log.error("member not run: %s", error)
                outcome = {"status": "failed", "error": f"FolderBusy: {error}"}
                busy[k] = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=outcome)
        return busy

    def launch_locked(self, jobs: list[Job], returns: dict[int, JobReturn], sweep_dir: Path) -> list[JobReturn]:
        from vaecli.run.signals import STOP
        from vaecli.run.task import completed
        from vaecli.runfolder import files as run_folder
        from vaecli.sweep.batched.board import GroupBoard
        from vaecli.sweep.batched.groups import plan_groups, stackable

        pending, alone = [], []
        for k, job in enumerate(jobs):
            if k in returns:
                continue
            if completed(job.cfg, job.out_dir):  # the ordinary task skips it, and says so in its train.log
                returns[k] = self.run(job, self.task_function)
            elif not stackable(job.cfg):  # a model or objective the stacked trainer does not implement
                alone.append(k)
            else:
                job.resume_step = int((self.resume_of(job) or {}).get("step", 0))
                pending.append(k)
        cfgs, starts = [jobs[k].cfg for k in pending], [jobs[k].resume_step for k in pending]
        groups = [[pending[j] for j in group] for group in plan_groups(cfgs, self.max_group, starts)]
        done = len(jobs) - len(pending) - len(alone)
        log.info(f"Launching {len(pending)} jobs as {len(groups)} stacked groups, {len(alone)} alone ({done} done)")
        board = GroupBoard(sweep_dir, [[jobs[k].name for k in group] for group in groups])
        data: dict = {}  # the images, loaded once per dataset
        with STOP.installed(stop_file=sweep_dir / run_folder.STOP_FILE):
            for k in alone:  # one after another, each its own solo run (a stopped sweep: they say so)
                log.info(f"\talone, #{jobs[k].idx} : {' '.join(filter_overrides(jobs[k].overrides))}")
                returns[k] = self.run(jobs[k], self.task_function)
            for number, group in enumerate(groups):
                if STOP.requested():  # stopped: no other group starts; its members say so as under any launcher
                    returns.update((k, self.run(jobs[k], self.task_function)) for k in group)
                    continue
                for k in group:
                    log.info(f"\tgroup {number + 1}, #{jobs[k].idx} : {' '.join(filter_overrides(jobs[k].overrides))}")
                returns.update(zip(group, self.train_group(number, [jobs[k] for k in group], board, data)))
        return [returns[k] for k in range(len(jobs))]

    @staticmethod
    def resume_of(job: Job) -> dict[str, Any] | None:
        """The member's checkpoint to continue from, as the ordinary task finds it (None: start afresh)."""
        from vaecli.run.resume import resume_point
        from vaecli.runfolder import files as run_folder

        return resume_point(job.cfg, job.out_dir, run_folder.read_result(job.out_dir), sweeping=True)

    def job(self, idx: int, overrides: Sequence[str]) -> Job:
        """Hydra's config for member ``idx`` and its folder, found as run_job finds it."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # the folder's name may use ${hydra:...}
        try:
            out_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(
                OmegaConf.select(config, "hydra.sweep.subdir")
            )
        finally:
            HydraConfig.instance().cfg = saved
        cfg = copy.deepcopy(config)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        return Job(idx, list(overrides), config, cfg, out_dir.absolute())

    def run(self, job: Job, task_function: TaskFunction, callbacks: bool = True) -> JobReturn:
        """Hydra's own run_job for this member: its folder, .hydra/, logging to its train.log, the task."""
        from hydra._internal.callbacks import Callbacks

        assert self.hydra_context is not None
        context = self.hydra_context if callbacks else HydraContext(self.hydra_context.config_loader, Callbacks())
        return run_job(
            hydra_context=context,
            task_function=task_function,
            config=job.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def train_group(self, number: int, jobs: list[Job], board: Any, data: dict) -> list[JobReturn]:
        """One group from the members' first file to their last; a second Ctrl-C raises, its members recorded."""
        from vaecli.config.runtime import threads_for
        from vaecli.run.signals import STOP, signal_name
        from vaecli.sweep.batched.members import GroupRun, start_member

        assert self.config is not None
        started = time.perf_counter()
        starts = [self.run(job, partial(start_member, resume=self.resume_of(job)), callbacks=False) for job in jobs]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the sweep's log while training
        threads = threads_for(jobs[0].cfg.threads, self.config.hydra.launcher)
        group = GroupRun([job.cfg for job in jobs], [start.return_value for start in starts], threads, data)
        board.state(number, "running")
        try:
            trained = time.perf_counter()
            done = group.train_group(STOP.requested, partial(board.step, number))
            if not done:  # stopped after a step: every unfinished member records it before any figure
                group.record_stop(STOP.signum or signal.SIGTERM)
                log.info(
                    "group %d: stopped by %s at step %d", number + 1, signal_name(group.stopped_by), group.trainer.step
                )
            finishing = time.perf_counter()
            group.start_helpers(threads - 1)
            returns = [self.run(job, partial(group.finish, i)) for i, job in enumerate(jobs)]
        except KeyboardInterrupt as error:  # a second Ctrl-C: leave at once
            group.quit(getattr(error, "signum", None) or STOP.signum or signal.SIGINT)
            board.state(number, "stopped")
            raise
        finally:
            group.close()
        board.state(number, "done" if done else "stopped")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        seconds = [trained - started, finishing - trained, time.perf_counter() - finishing]
        log.info("group %d: members set up in %.1f s, trained in %.1f s, their files in %.1f s", number + 1, *seconds)
        return returns
