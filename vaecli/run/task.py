"""Inside Hydra: one run (or sweep member) in the folder Hydra made, from result.json "running" to its files.

:func:`task` is what Hydra's main (and every launcher) calls, for `vae train` and for each member
of `vae sweep`. It reads top to bottom: skip or continue, record "running", train
(:class:`vaecli.run.loop.Loop`), then :meth:`Session.finish` records the outcome and draws the
figures. A sweep member never raises: it records its failure in result.json, so the other members
go on and aggregation sees every member's status, whatever the launcher.

A first SIGINT/SIGTERM ends training after the current step with a checkpoint, figures and
result.json "interrupted"; `vae train` then exits 130/143 with the command that continues it.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vaecli.config import schema as config_module
from vaecli.config.runtime import preemption_signal, slurm_job_id, threads_for
from vaecli.run import resume as resuming
from vaecli.run.console import TrainingProgress, print_summary, sayer
from vaecli.run.resume import config_hash
from vaecli.run.signals import STOP, Interrupted, signal_name
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import lock

if TYPE_CHECKING:
    from vaecli.run.loop import Loop, RowHook, TrainResult
    from vaecli.run.tensorboard_log import RunEvents

log = logging.getLogger("vaecli")

MEMBER_LOCK_WAIT_S = 60.0  # a sweep member waits this long for its folder's last holder to end (a stop, a requeue)

config_module.register()  # launchers unpickle `task` in fresh processes: the schema must be known there


def task(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function (kept undecorated so launchers can pickle it by name)."""
    session = Session.here(cfg)
    busy = session.lock()
    if busy is not None:
        return busy
    try:
        with STOP.installed(stop_file=session.stop_file, hand_over=preemption_signal()):
            skipped = session.start()
            if skipped is not None:
                return skipped
            with session.recording() as record, run_logger(cfg, session.out_dir, session.resumed_from) as events:
                with TrainingProgress(session.console, session.interactive and cfg.train.progress) as progress:
                    result = session.loop(events).run(progress.hook, STOP)
                record.outcome = session.finish(result)
                if events is not None:
                    events.outcome = record.outcome["status"]  # "interrupted": its HParams row says so
            if record.outcome.get("status") == "interrupted":
                STOP.hand_over()  # submitit's time-limit/preemption signal came: the job is requeued and continues
            return record.outcome
    finally:
        lock.release(session.out_dir)


class Session:
    """One process's part of a run: where it runs, what it continues from, and what it has recorded."""

    def __init__(self, cfg: DictConfig, out_dir: Path, sweeping: bool, launcher: Any, stop_file: Path | None):
        from rich.console import Console

        self.cfg, self.out_dir, self.sweeping, self.launcher, self.stop_file = (
            cfg,
            out_dir,
            sweeping,
            launcher,
            stop_file,
        )
        self.interactive = not sweeping
        self.console = Console(stderr=True)
        self.resume: dict[str, Any] | None = None
        self.started = time.time()
        self.record: dict[str, Any] = {}

    @classmethod
    def here(cls, cfg: DictConfig) -> Session:
        """The session Hydra started: its output folder, and whether it is a sweep member."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        out_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path.cwd()
        sweeping = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
        stop_file = Path(hydra_cfg.sweep.dir) / run_folder.STOP_FILE if sweeping else None
        return cls(cfg, out_dir, sweeping, hydra_cfg.launcher if sweeping else None, stop_file)

    def lock(self) -> dict[str, Any] | None:
        """Take the folder's lock (`vae train` holds it already); a sweep member whose folder another
        process holds ends "failed" without touching it (its outcome returned), a run is refused."""
        try:
            lock.acquire(self.out_dir, wait_s=MEMBER_LOCK_WAIT_S if self.sweeping else 0.0)
        except lock.FolderBusy as error:
            if not self.sweeping:
                raise
            log.error("member not run: %s", error)
            return {"status": "failed", "error": f"FolderBusy: {error}"}
        return None

    @property
    def resumed_from(self) -> int:
        return int(self.resume["step"]) if self.resume else 0

    def start(self) -> dict[str, Any] | None:
        """Skip (a sweep member already done, or a stopping sweep: its outcome) or record "running" (None)."""
        fingerprint = config_hash(self.cfg)
        previous = run_folder.read_result(self.out_dir)
        if self.sweeping and completed(self.cfg, self.out_dir):
            log.info("already completed with this config; skipped")
            return previous
        if self.sweeping and STOP.requested():  # the sweep is stopping: start no member
            if previous is None:
                run_folder.write_result(self.out_dir, status="interrupted", step=0, config_hash=fingerprint)
            return {"status": "interrupted"}
        self.resume = resuming.resume_point(self.cfg, self.out_dir, previous, self.sweeping)
        self.started = time.time()
        self.record = {"config_hash": fingerprint, **run_place(), "resumed_from": self.resumed_from}
        run_folder.write_result(self.out_dir, status="running", started=self.started, **self.record)
        return None

    def write(self, status: str, **fields: Any) -> None:
        seconds = round(time.time() - self.started, 3)
        run_folder.write_result(self.out_dir, status=status, seconds=seconds, **self.record, **fields)

    def recording(self) -> Recording:
        return Recording(self)

    def loop(self, on_row: RowHook | None) -> Loop:
        """The loop of this run, on this session's threads, with the config in train.log."""
        import torch

        from vaecli.run.loop import Loop, no_row_hook

        torch.set_num_threads(threads_for(self.cfg.threads, self.launcher))
        log.info("config:\n%s", OmegaConf.to_yaml(self.cfg, resolve=True))
        say = sayer(self.console, self.interactive)
        if not config_module.test_held_out(self.cfg):
            log.warning(config_module.NOT_HELD_OUT)
            if self.interactive:
                self.console.print(f"[yellow]warning: {config_module.NOT_HELD_OUT}[/yellow]")
        return Loop(self.cfg, self.out_dir, say, self.resume, on_row or no_row_hook)

    def finish(self, result: TrainResult) -> dict[str, Any]:
        """Record the outcome and draw the figures; a finished run also gets its summary and eval.iwae_k.

        A stopped run records "interrupted" before drawing, so a launcher that kills it soon after
        (submitit's local controller gives a task one second) still leaves an honest result.json.
        """
        from rich.console import Console

        from vaecli.measure import evaluation

        cfg, out_dir = self.cfg, self.out_dir
        outcome = {"step": result.steps, "steps": result.total, "train_seconds": round(result.seconds, 3)}
        if result.stopped_by is not None:
            name, command = signal_name(result.stopped_by), resume_command(out_dir)
            self.write("interrupted", **outcome, signal=name, resume=command, final=result.final)
            log.info("stopped by %s at step %s; %s", name, result.steps, command)
            with STOP.deferred():  # a second Ctrl-C quits between figures, never inside an import
                draw_loss_figure(result.rows, out_dir, cfg)
            with STOP.deferred():
                draw_run_figures(result, out_dir)
            return {"status": "interrupted", **outcome}
        draw_loss_figure(result.rows, out_dir, cfg)
        draw_run_figures(result, out_dir)
        if self.interactive:
            held_out = config_module.test_held_out(cfg)
            print_summary(Console(), result.final, out_dir, result.steps, result.seconds, held_out)
        bound = evaluation.after_training(cfg, result.model, result.test.images, out_dir, self.interactive)
        self.write("ok", **outcome, final=result.final, **bound)
        log.info("wrote %s", out_dir)
        return {"status": "ok", **outcome, "final": result.final, **bound}


class Recording:
    """``with`` around a session's work: an error is recorded in result.json as the run's outcome.

    A second Ctrl-C leaves at once, the last checkpoint as it was ("interrupted" at its step); any
    other error is "failed" with its traceback. A sweep member's error ends as its outcome (the
    other members go on); a run's error propagates to the command line.
    """

    def __init__(self, session: Session):
        self.session = session
        self.outcome: dict[str, Any] = {}

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        session = self.session
        if error is None:
            return False
        if isinstance(error, Interrupted):
            if (run_folder.read_result(session.out_dir) or {}).get("status") != "interrupted":  # not yet recorded
                step = error.saved_step if error.saved_step is not None else session.resumed_from
                resume = resume_command(session.out_dir)
                session.write("interrupted", step=step, signal=signal_name(error.signum), resume=resume)
            return False
        message = f"{kind.__name__}: {error}"
        session.write("failed", error=message, traceback="".join(traceback.format_exception(kind, error, tb)))
        log.error("run failed: %s", message)
        if session.sweeping and isinstance(error, Exception):
            self.outcome = {"status": "failed", "error": message}
            return True
        return False


# ----------------------------------------------------------------------------- pieces batched members share


def completed(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The result of a run of this very config that already completed in ``out_dir`` (a sweep skips it)."""
    done = run_folder.read_result(out_dir)
    return done if done and done.get("status") == "ok" and done.get("config_hash") == config_hash(cfg) else None


def run_place() -> dict[str, Any]:
    """Where a run ran, for its result.json."""
    return {"slurm_job_id": slurm_job_id(), "host": os.uname().nodename, "pid": os.getpid()}


def resume_command(run_dir: Path) -> str:
    return f"vae train --resume {shlex.quote(str(run_dir))}"


def run_logger(cfg: DictConfig, out_dir: Path, resumed_from: int = 0) -> AbstractContextManager[Any]:
    """``logger=tensorboard``: a row hook writing TensorBoard events (``with`` it: its exit writes the
    HParams row, failed or not); ``logger=csv``: no hook, metrics.csv is the whole record."""
    return run_events(cfg, out_dir, resumed_from) or nullcontext(None)


def run_events(cfg: DictConfig, out_dir: Path, resumed_from: int = 0) -> RunEvents | None:
    """The run's TensorBoard events (:class:`vaecli.run.tensorboard_log.RunEvents`) under ``logger=tensorboard``,
    its earlier events cut back to ``resumed_from`` when it continues from a checkpoint."""
    if cfg.logger.name != "tensorboard":
        return None
    from vaecli.run.tensorboard_log import RunEvents

    shown = {key: value for key, value in resuming.deciding_config(cfg).items() if key != "logger"}  # HParams columns
    return RunEvents(out_dir, shown, data=cfg.data, resumed_from=resumed_from)


def save_run(
    cfg: DictConfig,
    out_dir: Path,
    result: Any,
    rng: dict[str, Any],
    training: dict | None = None,
    figures: bool = True,
    loss_figure: bool = True,
    objective: dict | None = None,
) -> dict:
    """A trained model's checkpoint.pt and (with ``figures``) its figures; returns result.json's summary fields.

    For models trained outside :class:`vaecli.run.loop.Loop` (batched sweep members), whose loop does not
    save its own checkpoints; ``result`` has a :class:`vaecli.run.loop.TrainResult`'s fields. With
    ``figures`` (a finished member) it also runs ``eval.iwae_k``'s evaluation, as `vae train` does;
    ``loss_figure`` False leaves loss.png to whoever drew it.
    """
    from vaecli.measure import evaluation
    from vaecli.runfolder import checkpoint

    checkpoint.save(
        out_dir / run_folder.CHECKPOINT,
        config=OmegaConf.to_container(cfg, resolve=True),
        model=result.model,
        optimizer=result.optimizer,
        step=result.steps,
        rng=rng,
        final=result.final,
        training=training,
        objective=objective,
    )
    summary = {"step": result.steps, "steps": result.total, "train_seconds": round(result.seconds, 3)}
    if figures:
        if loss_figure:
            draw_loss_figure(result.rows, out_dir, cfg)
        draw_run_figures(result, out_dir)
        summary.update(evaluation.after_training(cfg, result.model, result.test.images, out_dir, interactive=False))
    return {**summary, "final": result.final}


def draw_run_figures(result: Any, out_dir: Path) -> None:
    """reconstructions.png and traversal.png from the trained model and its test images."""
    from vaecli.inspect import images
    from vaecli.measure import latents

    files = {"reconstructions": run_folder.RECONSTRUCTIONS_PNG, "traversal": run_folder.TRAVERSAL_PNG}
    for name, (tiles, columns) in latents.run_pictures(result.model.eval(), result.test.images).items():
        images.save_grid(tiles, out_dir / files[name], columns)


def draw_loss_figure(rows: list[dict[str, Any]], out_dir: Path, cfg: DictConfig) -> None:
    """loss.png from the metrics rows alone (no model: a process without the model's device can draw it)."""
    import pandas as pd

    from vaecli.inspect import plots
    from vaecli.objectives.registry import describe_objective

    title = f"{describe_objective(cfg)}, latent_size={cfg.latent_size}"
    plots.loss_plot(pd.DataFrame(rows), out_dir / run_folder.LOSS_PNG, title=title)
