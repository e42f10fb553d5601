"""A stacked group of sweep members as ordinary runs: each member's folder gets what `vae train` writes.

The batched launcher (``hydra_plugins/vaecli_batched_launcher``) takes each group through three
steps, so that Hydra's own job machinery (``run_job``: ``.hydra/``, logging, callbacks) opens and
closes every member's folder as it does for any launcher:

1. :func:`start_member`, as a member's task inside ``run_job``: the config in its train.log,
   result.json "running", and which log files Hydra opened for it;
2. :meth:`GroupRun.train_group`: one stacked model (:mod:`vaecli.sweep.batched.trainer`) for the whole group. Each
   member's metrics.csv rows and train.log lines are written as they come, and its checkpoint.pt
   on the way, as often as the solo loop writes one; a member whose loss or weights turn
   non-finite is recorded "failed" there and then, and the others carry on;
3. :meth:`GroupRun.finish`, as the member's task inside ``run_job`` (with the sweep's callbacks):
   checkpoint.pt of a plain single model, the figures and result.json through :func:`vaecli.run.task.save_run`,
   as `vae train` writes them; on Linux, forked :class:`~vaecli.sweep.file_helpers.FileHelpers` write a
   share of them meanwhile.

Stopping and resuming work as for a solo member. A first SIGINT/SIGTERM ends the group's step,
writes every unfinished member's checkpoint at the step reached and its result.json
"interrupted" (before any figure), then its figures; a second Ctrl-C records at once the
members not yet recorded, at their last checkpoint's step. A member that continues (its
checkpoint is put back into the stacks, :meth:`vaecli.sweep.batched.trainer.StackedTrainer.restore`) keeps
the metrics.csv rows its checkpoint counted, and ends as it would have without the stop.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vaecli.config.runtime import pick_device, settle_threads
from vaecli.config.schema import test_held_out
from vaecli.errors import RunError
from vaecli.models.likelihoods import run_nats_label
from vaecli.run.bookkeeping import CheckpointClock
from vaecli.run.loop import TrainResult, load_data, make_optimizer
from vaecli.run.signals import signal_name
from vaecli.run.task import (
    config_hash,
    draw_loss_figure,
    draw_run_figures,
    resume_command,
    run_events,
    run_place,
    save_run,
)
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import lock, provenance
from vaecli.runfolder.metrics import MetricsWriter
from vaecli.sweep.batched.groups import members_of, settings_of
from vaecli.sweep.batched.trainer import Failure, StackedTrainer, stacked_probe
from vaecli.sweep.file_helpers import FileHelpers

log = logging.getLogger("vaecli")


@dataclass
class MemberStart:
    """A member's folder as :func:`start_member` left it."""

    out_dir: Path
    started: float  # time.time() at the group's start
    fingerprint: str  # config_hash
    log_files: list[tuple[str, logging.Formatter | None]]  # the files Hydra's job logging writes its train.log to
    resume: dict[str, Any] | None = None  # the loaded checkpoint it continues from

    @property
    def resumed_from(self) -> int:
        return int(self.resume["step"]) if self.resume else 0


def start_member(cfg: DictConfig, resume: dict[str, Any] | None = None) -> MemberStart:
    """Step 1, inside Hydra's ``run_job``: what `vae train` records before its first step.

    ``resume`` is the member's checkpoint to continue from (:func:`vaecli.run.resume.resume_point`).
    """
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    lock.acquire(out_dir)  # held by the launcher until the group closes (GroupRun.close)
    started, fingerprint = time.time(), config_hash(cfg)
    start = MemberStart(out_dir, started, fingerprint, [], resume)
    record = {"config_hash": fingerprint, **run_place(), "resumed_from": start.resumed_from}
    run_folder.write_result(out_dir, status="running", started=started, **record)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    start.log_files = [
        (handler.baseFilename, handler.formatter)
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.FileHandler)
    ]
    return start


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
        self.writers: dict[int, MetricsWriter] = {}
        self.errors: dict[int, str] = {}  # members recorded as failed
        self.helpers = FileHelpers(self.files, [], 0)
        self.finished: set[int] = set()  # members whose files are written
        self.stopped_by: int | None = None  # the signal that stopped the group before its last step
        self.recorded: set[int] = set()  # members whose result.json says "interrupted"
        self.saved_steps: dict[int, int] = {}  # the step of each member's last checkpoint this session
        self.checkpoints = CheckpointClock(cfgs[0].train.checkpoint_every)

    def say(self, message: str) -> None:
        for logger in self.loggers:
            logger.info(message)

    def build(self) -> StackedTrainer:
        """The data (loaded once per dataset) and the stacked model, as each member's solo run starts."""
        first = self.cfgs[0]
        torch.set_num_threads(self.threads)
        if data_key(first) not in self.data:
            self.data[data_key(first)] = load_data(first, self.say)
        train_images, self.test, self.data_files = self.data[data_key(first)]
        self.device = pick_device(first.device)
        self.settings = settings_of(first, len(train_images))
        members = members_of(self.cfgs)
        trainer = StackedTrainer(members, self.settings, train_images, self.test.images, self.device)
        self.threads = self.pick_threads(trainer)
        return trainer

    def pick_threads(self, trainer: StackedTrainer) -> int:
        """``threads=0`` on the CPU: the count the members began with when they continue, else the fastest now."""
        if self.cfgs[0].threads or self.device.type != "cpu":
            return self.threads
        recorded = [start.resume["training"].get("threads") for start in self.starts if start.resume]
        first = next((int(count) for count in recorded if count), 0)
        return settle_threads(lambda: stacked_probe(trainer), self.threads, first, self.say)

    def open_members(self, trainer: StackedTrainer) -> None:
        """Each member's metrics.csv (kept up to its checkpoint's rows when it continues, then put back
        into the stacks); a member whose folder cannot continue fails alone, as its solo run would."""
        first, broken = self.cfgs[0], {}
        held_out = test_held_out(first)
        nats_are = run_nats_label(first)
        origin = provenance.collect(first, self.device, torch.get_num_threads(), self.data_files)  # one per group
        for i, start in enumerate(self.starts):
            keep = start.resume["training"]["position"]["rows"] if start.resume else None
            try:
                path = start.out_dir / run_folder.METRICS_CSV
                own = getattr(trainer.members[i].objective, "columns", ())
                self.writers[i] = MetricsWriter(path, keep, held_out, nats_are, own)
                if start.resume is not None:
                    trainer.restore(i, start.resume, self.writers[i].rows)
                provenance.write(start.out_dir, origin, start.resumed_from)
            except RunError as error:
                broken[i] = Failure(start.resumed_from, str(error), type(error).__name__)
        if broken:
            trainer.drop(broken)
        for i, failure in broken.items():
            self.fail(i, str(failure), "its folder could not continue from its checkpoint")
        where = f"{len(trainer.train_images)} {self.cfgs[0].data.name} images ({self.device}, {self.threads} threads)"
        steps, others = self.settings.steps, len(self.starts) - 1
        start_text = f"continuing at step {trainer.step + 1} of {steps}" if trainer.step else f"training {steps} steps"
        self.say(f"{start_text} on {where}, stacked with {others} other sweep members")

    def train_group(self, stop: Callable[[], bool], on_progress: Callable[[int, int], None]) -> bool:
        """Step 2: train the group; False when ``stop()`` ended it before its last step.

        An error (no data, a bug) fails every member with it, as each solo run would have failed.
        """
        self.events = [run_events(cfg, start.out_dir, start.resumed_from) for cfg, start in zip(self.cfgs, self.starts)]
        try:
            self.trainer = trainer = self.build()
            self.open_members(trainer)
            self.checkpoints.saved()
            trainer.run(
                on_row=self.row,
                on_failure=self.failed,
                on_progress=lambda step, steps, *_: on_progress(step, steps),
                stop=lambda: self.after_step(stop),
            )
            stopped = bool(trainer.running) and trainer.step < self.settings.steps
            if stopped and any(self.saved_steps.get(i) != trainer.step for i in trainer.running):
                self.checkpoint()  # as the solo loop: the step the stop came in is saved
        except Exception as error:
            for i in range(len(self.cfgs)):
                if i not in self.errors:
                    self.fail(i, f"{type(error).__name__}: {error}", traceback.format_exc())
            return True
        finally:
            for writer in self.writers.values():
                writer.close()
            done = self.trainer is not None and self.trainer.step == self.settings.steps
            for i, sink in enumerate(self.events):
                if sink is not None:  # before any helper forks: the events writer runs a thread
                    sink.close("failed" if i in self.errors else "ok" if done else "interrupted")
        return not stopped

    def row(self, i: int, values: dict[str, Any]) -> None:
        """A metrics row of member i: metrics.csv, TensorBoard events (logger=tensorboard), train.log."""
        trainer = self.trainer
        self.writers[i].write(values)
        if self.events[i] is not None:  # the member's own model for the pictures of its test rows
            model = trainer.model.member_model(trainer.running.index(i)) if values["split"] == "test" else None
            self.events[i](values, model)
        if values["split"] == "train":
            self.loggers[i].info(
                f"step {values['step']}: loss {values['loss']:.5f}, neg_elbo_nats {values['neg_elbo_nats']:.2f}"
            )

    def after_step(self, stop: Callable[[], bool]) -> bool:
        """Asked after every step: True to stop there; else the members' checkpoints when due, as the
        solo loop's (:class:`vaecli.run.bookkeeping.CheckpointClock`)."""
        if stop():
            return True
        step = self.trainer.step
        if (
            self.checkpoints.due(step, time.perf_counter()) and step < self.settings.steps
        ):  # the last step's checkpoint comes with the files
            self.checkpoint()
        return False

    def checkpoint(self) -> None:
        """checkpoint.pt of every running member at this step, after the metrics rows it counts are on disk."""
        trainer = self.trainer
        trainer.fail_broken_weights(self.failed)
        for i in trainer.running:
            self.writers[i].sync()
            self.save(i, figures=False)
            self.saved_steps[i] = trainer.step
        self.checkpoints.saved()

    def failed(self, i: int, failure: Failure) -> None:
        """A member the loop dropped: recorded at once, as a solo run records its exception."""
        self.fail(i, str(failure), f"found at step {failure.step}, where the loop checks its loss and weights")

    def fail(self, i: int, error: str, detail: str) -> None:
        self.errors[i] = error
        self.write(i, "failed", error=error, traceback=detail)
        self.loggers[i].error("run failed: %s", error)

    def write(self, i: int, status: str, **fields: Any) -> None:
        """Member i's result.json, with the fields `vae train` gives every status."""
        start = self.starts[i]
        seconds = round(time.time() - start.started, 3)
        record = {"config_hash": start.fingerprint, **self.where, "resumed_from": start.resumed_from}
        run_folder.write_result(start.out_dir, status=status, seconds=seconds, **record, **fields)

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

    def summary(self, i: int) -> dict[str, Any]:
        """result.json's summary fields for member i, as :func:`vaecli.run.task.save_run` returns them."""
        trainer = self.trainer
        step, seconds, final = trainer.step, round(trainer.seconds, 3), trainer.results[i].final
        summary = {"step": step, "steps": self.settings.steps, "train_seconds": seconds, "final": final}
        if self.stopped_by is None and int(self.cfgs[i].eval.iwae_k):  # as save_run returns it: a helper wrote it
            evaluation = run_folder.read_evaluation(self.starts[i].out_dir)
            summary.update({"evaluation": evaluation} if evaluation is not None else {})
        return summary

    def save(self, i: int, figures: bool = True, loss: bool = True) -> dict[str, Any]:
        """checkpoint.pt (with the loop position to continue from) and, with ``figures``, the run's figures
        (loss.png too unless ``loss`` is False)."""
        rng = {"torch": self.trainer.member_noise_state(i), "shuffle": self.trainer.member_shuffle_state(i)}
        rng.update(self.trainer.member_binarize_state(i))
        training = self.trainer.member_training_state(i) | {"threads": self.threads}
        result = self.result(i)
        objective = self.trainer.members[i].objective
        own = objective.state_dict() if objective is not None else None
        out_dir = self.starts[i].out_dir
        return save_run(self.cfgs[i], out_dir, result, rng, training, figures=figures, loss_figure=loss, objective=own)

    def files(self, i: int, loss: bool = True) -> dict[str, Any]:
        """Member i's files once the group ended: checkpoint.pt and figures (after a stop, the figures only);
        loss.png unless ``loss`` is False (a helper drew it)."""
        if self.stopped_by is None:
            return self.save(i, loss=loss)
        if loss:
            draw_loss_figure(self.trainer.results[i].rows, self.starts[i].out_dir, self.cfgs[i])
        draw_run_figures(self.result(i), self.starts[i].out_dir)
        return self.summary(i)

    def loss_figure(self, i: int) -> None:
        """Member i's loss.png, from its metrics rows alone: what a helper draws when the model is on a GPU."""
        draw_loss_figure(self.trainer.results[i].rows, self.starts[i].out_dir, self.cfgs[i])

    @property
    def whole_members(self) -> bool:
        """Whether the helpers write whole members (on a CPU) or only their loss.png (on a GPU)."""
        return self.trainer is None or helpers_may_use_the_model(self.device)

    def start_helpers(self, workers: int) -> None:
        """Fork up to ``workers`` helpers that write some members' files (see :class:`FileHelpers`).

        On a CPU a helper writes whole members. A forked child cannot use the parent's CUDA (or MPS)
        context, so on a GPU the helpers draw only the members' loss plots (plotnine's, most of a
        member's time), from rows in memory, while this process writes the rest with the model.
        """
        if self.trainer is None:
            workers = 0
        job = self.files if self.whole_members else self.loss_figure
        self.helpers = FileHelpers(job, [i for i in range(len(self.cfgs)) if i not in self.errors], workers)

    def written_elsewhere(self, i: int) -> dict[str, Any] | None:
        """Member i's summary when a helper (or this process, before forking them) wrote its files; else None."""
        if not self.helpers.written(i):
            return None
        return self.helpers.written_here.get(i) or self.summary(i)

    def finish(self, i: int, cfg: DictConfig) -> dict[str, Any]:
        """Step 3, member i's task inside Hydra's ``run_job``: its files and result.json, as `vae train`'s task."""
        if i in self.errors:
            return {"status": "failed", "error": self.errors[i]}
        try:
            if self.whole_members:
                summary = self.written_elsewhere(i) or self.files(i)
            else:
                summary = self.files(i, loss=not self.helpers.written(i))
        except Exception as error:  # as run.task in a sweep: record it, let the others finish
            self.fail(i, f"{type(error).__name__}: {error}", traceback.format_exc())
            return {"status": "failed", "error": self.errors[i]}
        self.finished.add(i)
        if self.stopped_by is not None:  # result.json was written at the stop
            name, command = signal_name(self.stopped_by), resume_command(self.starts[i].out_dir)
            log.info("stopped by %s at step %s; %s", name, summary["step"], command)
            return {"status": "interrupted", **{key: summary[key] for key in ("step", "steps", "train_seconds")}}
        log.info("wrote %s", self.starts[i].out_dir)
        self.write(i, "ok", **summary)
        return {"status": "ok", **summary}

    def record_stop(self, signum: int) -> None:
        """A stop between steps: result.json "interrupted" for every member still training, worded as
        `vae train` words it, before any figure (their checkpoints hold this step)."""
        self.stopped_by = signum
        for i in self.trainer.running:
            command = resume_command(self.starts[i].out_dir)
            self.write(i, "interrupted", **self.summary(i), signal=signal_name(signum), resume=command)
            self.recorded.add(i)

    def quit(self, signum: int) -> None:
        """A second Ctrl-C: members not yet recorded record "interrupted" at their last checkpoint's step, at once."""
        for i, start in enumerate(self.starts):
            if i not in self.errors and i not in self.finished and i not in self.recorded:
                step = self.saved_steps.get(i, start.resumed_from)
                self.write(
                    i, "interrupted", step=step, signal=signal_name(signum), resume=resume_command(start.out_dir)
                )

    def close(self) -> None:
        self.helpers.close()
        for start in self.starts:
            lock.release(start.out_dir)
        for logger in self.loggers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()


def member_logger(start: MemberStart, number: int) -> logging.Logger:
    """A logger that writes to this member's train.log alone (Hydra's job logging holds one member at a time)."""
    logger = logging.getLogger(f"vaecli.member{number}")
    logger.propagate, logger.level = False, logging.INFO
    for path, formatter in start.log_files:
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def helpers_may_use_the_model(device: torch.device) -> bool:
    """Whether a forked helper can run the members' models: on a CPU, yes; a GPU's context does not survive a fork."""
    return device.type == "cpu"
