"""A stacked group of sweep members as ordinary runs: each member's folder gets what `vae train` writes.

The batched launcher (``hydra_plugins/vaecli_batched_launcher``) takes each group through three
steps, so that Hydra's own job machinery (``run_job``: ``.hydra/``, logging, callbacks) opens and
closes every member's folder as it does for any launcher:

1. :func:`start_member`, as a member's task inside ``run_job``: the config in its train.log,
   result.json "running", and which log files Hydra opened for it;
2. :meth:`GroupRun.train`: one stacked model (:mod:`vaecli.stacked`) for the whole group. Each
   member's metrics.csv rows and train.log lines are written as they come; a member whose loss or
   weights turn non-finite is recorded "failed" there and then, and the others carry on;
3. :meth:`GroupRun.finish`, as the member's task inside ``run_job`` (with the sweep's callbacks):
   checkpoint.pt of a plain single model, the figures and result.json through :func:`vaecli.run.save_run`,
   as `vae train` writes them; on Linux, forked :class:`FileHelpers` write a share of them meanwhile.

A group stopped early (SIGINT/SIGTERM) records every unfinished member: its checkpoint at the step
reached, with the loop position a later run continues from, and result.json "failed" saying it was
interrupted, so rerunning the sweep trains it again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vaecli import run_folder
from vaecli.config import test_held_out
from vaecli.likelihoods import nats_label
from vaecli.metrics import MetricsWriter
from vaecli.run import config_hash, run_events, run_place, save_run
from vaecli.runtime import pick_device
from vaecli.stacked import Failure, StackedTrainer
from vaecli.stacked_groups import member_of, settings_of
from vaecli.train import TrainResult, load_data, make_optimizer

log = logging.getLogger("vaecli")
PROGRESS_SECONDS = 1.0  # how often groups.json says how far the running group has got


@dataclass
class MemberStart:
    """A member's folder as :func:`start_member` left it."""

    out_dir: Path
    started: float  # time.time() at the group's start
    fingerprint: str  # config_hash
    log_files: list[tuple[str, logging.Formatter | None]]  # the files Hydra's job logging writes its train.log to


def start_member(cfg: DictConfig) -> MemberStart:
    """Step 1, inside Hydra's ``run_job``: what `vae train` records before its first step."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    started, fingerprint = time.time(), config_hash(cfg)
    run_folder.write_result(out_dir, status="running", started=started, config_hash=fingerprint, **run_place())
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    files = [
        (handler.baseFilename, handler.formatter)
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.FileHandler)
    ]
    return MemberStart(out_dir, started, fingerprint, files)


def data_key(cfg: DictConfig) -> str:
    return repr(sorted(OmegaConf.to_container(cfg.data, resolve=True).items()))  # type: ignore[union-attr]


class GroupRun:
    """A group's stacked model and its members' files, from the first step to the last file.

    ``data`` caches the images by data config, so a sweep loads each dataset once.
    """

    def __init__(self, cfgs: list[DictConfig], starts: list[MemberStart], threads: int, data: dict[str, Any]):
        self.cfgs, self.starts, self.threads, self.data = cfgs, starts, threads, data
        self.loggers = [member_logger(start, number) for number, start in enumerate(starts)]
        self.where = run_place()
        self.trainer: StackedTrainer | None = None
        self.errors: dict[int, str] = {}  # members recorded as failed
        self.helpers = FileHelpers(self.save, [], 0)
        self.finished: set[int] = set()  # members whose files are written

    def say(self, message: str) -> None:
        for logger in self.loggers:
            logger.info(message)

    def build(self) -> StackedTrainer:
        """The data (loaded once per dataset) and the stacked model, as each member's solo run starts."""
        first = self.cfgs[0]
        torch.set_num_threads(self.threads)
        if data_key(first) not in self.data:
            self.data[data_key(first)] = load_data(first, self.say)
        train_images, self.test, _ = self.data[data_key(first)]
        self.device = pick_device(first.device)
        self.settings = settings_of(first, len(train_images))
        members = [member_of(cfg) for cfg in self.cfgs]
        self.say(
            f"training {self.settings.steps} steps on {len(train_images)} {first.data.name} images "
            f"({self.device}, {self.threads} threads), stacked with {len(members) - 1} other sweep members"
        )
        return StackedTrainer(members, self.settings, train_images, self.test.images, self.device)

    def train(self, stop: Callable[[], bool], on_progress: Callable[[int, int], None]) -> bool:
        """Step 2: train the group; False when ``stop()`` ended it before its last step.

        An error (no data, a bug) fails every member with it, as each solo run would have failed.
        """
        writers: list[MetricsWriter] = []
        events = [run_events(cfg, start.out_dir) for cfg, start in zip(self.cfgs, self.starts)]  # logger=tensorboard

        def row(i: int, values: dict[str, Any]) -> None:
            writers[i].write(values)
            if events[i] is not None:  # the member's own model for the pictures of its test rows
                model = trainer.model.member_model(trainer.running.index(i)) if values["split"] == "test" else None
                events[i](values, model)
            if values["split"] == "train":
                self.loggers[i].info(
                    f"step {values['step']}: loss {values['loss']:.5f}, neg_elbo_nats {values['neg_elbo_nats']:.2f}"
                )

        try:
            self.trainer = trainer = self.build()
            first = self.cfgs[0]
            held_out = test_held_out(first)
            nats_are = nats_label(str(first.model.likelihood), first.data.binarize != "none")
            writers += [
                MetricsWriter(start.out_dir / run_folder.METRICS_CSV, test_held_out=held_out, nats_are=nats_are)
                for start in self.starts
            ]
            trainer.run(
                on_row=row,
                on_failure=self.failed,
                on_progress=lambda step, steps, *_: on_progress(step, steps),
                stop=stop,
            )
        except Exception as error:
            for i in range(len(self.cfgs)):
                if i not in self.errors:
                    self.fail(i, f"{type(error).__name__}: {error}", traceback.format_exc())
            return True
        finally:
            for writer in writers:
                writer.close()
            done = self.trainer is not None and self.trainer.step == self.settings.steps
            for i, sink in enumerate(events):
                if sink is not None:  # before any helper forks: the events writer runs a thread
                    sink.close(failed=i in self.errors or not done)
        return trainer.step == self.settings.steps or not trainer.running

    def failed(self, i: int, failure: Failure) -> None:
        """A member the loop dropped: recorded at once, as a solo run records its exception."""
        self.fail(i, str(failure), f"found at step {failure.step}, where the loop checks its loss and weights")

    def fail(self, i: int, error: str, detail: str) -> None:
        start = self.starts[i]
        self.errors[i] = error
        seconds = round(time.time() - start.started, 3)
        record = {"error": error, "seconds": seconds, "config_hash": start.fingerprint, **self.where, "resumed_from": 0}
        run_folder.write_result(start.out_dir, status="failed", **record, traceback=detail)
        self.loggers[i].error("run failed: %s", error)

    def result(self, i: int) -> TrainResult:
        """Member i as the solo loop's result: a plain model and its own Adam state."""
        trainer = self.trainer
        model = trainer.model.member_model(trainer.running.index(i))
        optimizer = make_optimizer(model, self.settings.lr, self.device)
        optimizer.load_state_dict(trainer.member_optimizer_state_dict(i))
        rows, final = trainer.results[i].rows, trainer.results[i].final
        seconds, eval_seconds = trainer.seconds, trainer.eval_seconds
        return TrainResult(
            model, optimizer, trainer.step, self.settings.steps, rows, self.test, seconds, eval_seconds, final
        )

    def save(self, i: int, figures: bool = True) -> dict[str, Any]:
        """checkpoint.pt (with the loop position to continue from) and, with ``figures``, the run's figures."""
        rng = {"torch": self.trainer.member_noise_state(i), "shuffle": self.trainer.member_shuffle_state(i)}
        rng.update(self.trainer.member_binarize_state(i))
        training = self.trainer.member_training_state(i)
        return save_run(self.cfgs[i], self.starts[i].out_dir, self.result(i), rng, training, figures=figures)

    def start_helpers(self, workers: int) -> list[int]:
        """Fork up to ``workers`` helpers that write some members' files (see :class:`FileHelpers`);
        returns the order to finish the members in: this process's share first."""
        if self.trainer is None or self.device.type != "cpu":
            workers = 0  # a forked child cannot use the parent's CUDA (or MPS) context
        self.helpers = FileHelpers(self.save, [i for i in range(len(self.cfgs)) if i not in self.errors], workers)
        return self.helpers.order(range(len(self.cfgs)))

    def finish(self, i: int, cfg: DictConfig) -> dict[str, Any]:
        """Step 3, member i's task inside Hydra's ``run_job``: its files and result.json, as `vae train`'s task."""
        start = self.starts[i]
        if i in self.errors:
            return {"status": "failed", "error": self.errors[i]}
        try:
            if self.helpers.written(i):  # the summary save_run returns
                summary = {"step": self.trainer.step, "steps": self.settings.steps}
                summary["train_seconds"] = round(self.trainer.seconds, 3)
                summary["final"] = self.trainer.results[i].final
            else:
                summary = self.save(i)
        except Exception as error:  # as run.task in a sweep: record it, let the others finish
            self.fail(i, f"{type(error).__name__}: {error}", traceback.format_exc())
            return {"status": "failed", "error": self.errors[i]}
        log.info("wrote %s", start.out_dir)
        seconds = round(time.time() - start.started, 3)
        record = {"seconds": seconds, "config_hash": start.fingerprint, **self.where, "resumed_from": 0, **summary}
        run_folder.write_result(start.out_dir, status="ok", **record)
        self.finished.add(i)
        return {"status": "ok", **summary}

    def interrupt(self, reason: str, consistent: bool) -> None:
        """Record every member that has not finished: "failed" (a rerun trains it again), and, when the
        stacks are ``consistent`` (stopped between steps), its checkpoint at the step reached."""
        trainer = self.trainer
        step = trainer.step if trainer else 0
        for i in range(len(self.cfgs)):
            if i in self.errors or i in self.finished:
                continue
            saved = ""
            if consistent and step > 0 and trainer is not None:
                self.save(i, figures=False)
                saved = f"; {run_folder.CHECKPOINT} holds step {step}"
            self.fail(i, f"interrupted by {reason} at step {step}{saved}; rerun the sweep to train it", "interrupted")

    def close(self) -> None:
        for logger in self.loggers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()


class FileHelpers:
    """Forked helper processes that write some members' files while this process writes the others'.

    A member's files (checkpoint.pt, three figures) take a fraction of a second, mostly plotnine's,
    and once a group has trained nothing else keeps the other CPUs busy. On Linux, helpers forked
    from this process (its memory shared copy-on-write, one torch thread each, as torch's DataLoader
    workers) write a share of the members each. A helper that fails or hangs only costs time: its
    members' files are then written here.
    """

    SECONDS_PER_MEMBER = 30  # a helper that takes longer than this per member (plus a minute) is stopped

    def __init__(self, write: Callable[[int], object], members: list[int], workers: int):
        self.pids: dict[int, int] = {}  # member -> its helper's pid
        self.wrote: dict[int, bool] = {}  # helper pid -> it wrote all of its members' files
        self.sizes: dict[int, int] = {}  # helper pid -> its members
        if workers < 1 or len(members) < 2 or sys.platform != "linux":
            return
        for share in (members[k :: workers + 1] for k in range(1, workers + 1)):
            if share:
                pid = fork_helper(write, share)
                self.pids.update(dict.fromkeys(share, pid))
                self.sizes[pid] = len(share)

    def order(self, members: Iterable[int]) -> list[int]:
        members = list(members)
        return [i for i in members if i not in self.pids] + [i for i in members if i in self.pids]

    def written(self, i: int) -> bool:
        """Whether a helper wrote member i's files (False: write them here)."""
        pid = self.pids.pop(i, None)
        if pid is None:
            return False
        if pid not in self.wrote:
            self.wrote[pid] = reap(pid, 60 + self.SECONDS_PER_MEMBER * self.sizes[pid])
        return self.wrote[pid]


def fork_helper(write: Callable[[int], object], share: list[int]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns about forking with threads
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a helper; the parent writes its share
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
        for i in share:
            write(i)
        code = 0
    finally:
        os._exit(code)


def reap(pid: int, timeout: float) -> bool:
    """Wait for a helper; True when it exited 0 within ``timeout`` seconds (else it is killed)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.02)


def member_logger(start: MemberStart, number: int) -> logging.Logger:
    """A logger that writes to this member's train.log alone (Hydra's job logging holds one member at a time)."""
    logger = logging.getLogger(f"vaecli.member{number}")
    logger.propagate, logger.level = False, logging.INFO
    for path, formatter in start.log_files:
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class GroupBoard:
    """groups.json in the sweep folder: the groups, their state and step, for `vae sweep`'s progress line."""

    def __init__(self, sweep_dir: Path, groups: list[list[str]]):
        self.sweep_dir = sweep_dir
        self.groups = [{"members": members, "state": "waiting", "step": 0, "steps": None} for members in groups]
        self.written = 0.0
        self.write()

    def write(self) -> None:
        run_folder.write_groups(self.sweep_dir, self.groups)
        self.written = time.perf_counter()

    def state(self, number: int, state: str) -> None:
        self.groups[number]["state"] = state
        self.write()

    def step(self, number: int, step: int, steps: int) -> None:
        self.groups[number].update(step=step, steps=steps)
        if time.perf_counter() - self.written >= PROGRESS_SECONDS:
            self.write()
