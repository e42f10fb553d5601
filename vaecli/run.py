"""One run from end to end: pre-flight checks, the Hydra task, then checkpoint, figures and summary.

``vae train`` checks its overrides, device and data before Hydra makes a folder, claims the
folder, then runs :func:`task` through Hydra's main. The same task serves every member of
``vae sweep`` (multirun): there a member never raises but records its failure in result.json,
so the other members go on and aggregation sees every member's status, whatever the launcher.

A first SIGINT/SIGTERM ends training after the current step with a checkpoint, figures and
result.json "interrupted"; `vae train` then exits 130/143 with the command that continues it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vaecli import config as config_module
from vaecli import extras, run_folder
from vaecli import resume as resuming
from vaecli.errors import RunError, Stopped, VaeError, first_line
from vaecli.hydra_bridge import compose, has_key, print_config, quote_value, run_hydra
from vaecli.resume import config_hash
from vaecli.runtime import pick_device, preemption_signal, slurm_job_id, threads_for
from vaecli.signals import STOP, Interrupted, exit_code, signal_name

if TYPE_CHECKING:
    from vaecli.tensorboard_log import RunEvents
    from vaecli.train import RowHook

log = logging.getLogger("vaecli")
SUMMARY_COLUMNS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")

config_module.register()  # launchers unpickle `task` in fresh processes: the schema must be known there


# ----------------------------------------------------------------------------- before Hydra


def train(
    overrides: Sequence[str], cfg_flag: str | None = None, resolve: bool = False, resume: str | None = None
) -> Path:
    """``vae train``: check everything, claim a folder, then train through Hydra; returns the run folder.

    ``resume`` (a run folder or its checkpoint) continues that run in its own folder instead.
    """
    if cfg_flag is not None:
        print_config(overrides, cfg_flag, resolve, task)
        return Path.cwd()
    with STOP.installed():
        try:
            return start(overrides, resume)
        except Interrupted as error:  # a second Ctrl-C before training began
            raise Stopped(f"{signal_name(error.signum)} before training began", exit_code(error.signum)) from None


def start(overrides: Sequence[str], resume: str | None) -> Path:
    if resume is not None:
        run_dir, arguments, composed = resuming.prepare(resume, overrides)
        preflight([composed])
    else:
        composed = compose(overrides, with_hydra=True)
        preflight([composed])
    if STOP.signum is not None:  # during the data check: no folder yet, nothing to continue
        raise Stopped(f"{signal_name(STOP.signum)} before training began", exit_code(STOP.signum))
    if resume is None:
        run_dir, arguments = claim_folder(composed, overrides)
    try:
        run_hydra(task, arguments)
    except VaeError:
        raise
    except KeyboardInterrupt as error:  # a second signal while training
        raise stopped(run_dir, getattr(error, "signum", None) or STOP.signum or signal.SIGINT) from None
    except (RuntimeError, OSError, ValueError) as error:
        raise RunError(f"{type(error).__name__}: {first_line(error)}") from None
    if STOP.signum is not None and (run_folder.read_result(run_dir) or {}).get("status") == "interrupted":
        raise stopped(run_dir, STOP.signum)
    return run_dir


def claim_folder(composed: DictConfig, overrides: Sequence[str]) -> tuple[Path, list[str]]:
    """This run's own folder: the one hydra.run.dir names (if it holds no run yet) or a fresh one."""
    if has_key(overrides, "hydra.run.dir"):
        return run_folder.claim(Path(composed.hydra.run.dir)), list(overrides)
    run_dir = run_folder.claim_fresh(Path(composed.hydra.run.dir))
    return run_dir, [*overrides, f"hydra.run.dir={quote_value(str(run_dir))}"]


def resume_command(run_dir: Path) -> str:
    return f"vae train --resume {shlex.quote(str(run_dir))}"


def stopped(run_dir: Path, signum: int) -> Stopped:
    """The one line a stopped `vae train` ends with, and its exit code (128 + the signal's number)."""
    result = run_folder.read_result(run_dir) or {}
    name, step, steps = signal_name(signum), result.get("step"), result.get("steps")
    if not (run_dir / run_folder.CHECKPOINT).is_file():
        return Stopped(f"run {run_dir} interrupted by {name} before its first checkpoint", exit_code(signum))
    where = f"at step {step} of {steps}" if steps is not None else f"at step {step}"
    message = (
        f"run {run_dir} interrupted by {name} {where} (checkpoint saved); continue it with: {resume_command(run_dir)}"
    )
    return Stopped(message, exit_code(signum))


def preflight(configs: Iterable[DictConfig]) -> None:
    """Device and data checked before Hydra makes folders: a run that cannot start leaves none behind."""
    from vaecli.datasets import ensure_data

    configs = list(configs)
    if any(cfg.logger.name == "tensorboard" for cfg in configs):
        extras.require("tensorboard", "logger=tensorboard")
    for device in sorted({cfg.device for cfg in configs}):
        pick_device(device)
    for name, root in sorted({(cfg.data.name, cfg.data.root) for cfg in configs}):
        ensure_data(name, Path(root))


# ----------------------------------------------------------------------------- inside Hydra


def task(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function (kept undecorated so launchers can pickle it by name)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    out_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg else Path.cwd()
    sweeping = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    stop_file = Path(hydra_cfg.sweep.dir) / run_folder.STOP_FILE if sweeping else None
    with STOP.installed(stop_file=stop_file, hand_over=preemption_signal()):
        outcome = run_task(cfg, out_dir, hydra_cfg.launcher if sweeping else None, sweeping)
        if outcome.get("status") == "interrupted":
            STOP.hand_over()  # submitit's time-limit/preemption signal came: it requeues the job, which continues
        return outcome


def run_task(cfg: DictConfig, out_dir: Path, launcher: Any, sweeping: bool) -> dict[str, Any]:
    """One run (or sweep member) in ``out_dir``: skipped, started, or continued from its checkpoint."""
    fingerprint = config_hash(cfg)
    previous = run_folder.read_result(out_dir)
    if sweeping and completed(cfg, out_dir):
        log.info("already completed with this config; skipped")
        return previous
    if sweeping and STOP.requested():  # the sweep is stopping: start no member
        if previous is None:
            run_folder.write_result(out_dir, status="interrupted", step=0, config_hash=fingerprint)
        return {"status": "interrupted"}
    resume = resuming.resume_point(cfg, out_dir, previous, sweeping)
    started = time.time()
    record = {"config_hash": fingerprint, **run_place(), "resumed_from": int(resume["step"]) if resume else 0}
    run_folder.write_result(out_dir, status="running", started=started, **record)

    def write(status: str, **fields: Any) -> None:
        run_folder.write_result(out_dir, status=status, seconds=round(time.time() - started, 3), **record, **fields)

    try:
        with run_logger(cfg, out_dir, record["resumed_from"]) as on_row:
            threads = threads_for(cfg.threads, launcher)
            result = train_and_save(cfg, out_dir, threads, not sweeping, resume, write, on_row)
            if on_row is not None:
                on_row.outcome = result["status"]  # "interrupted": its HParams row says so
    except Interrupted as error:  # a second Ctrl-C: leave at once, the last checkpoint as it was
        if (run_folder.read_result(out_dir) or {}).get("status") != "interrupted":  # not yet recorded
            step = error.saved_step if error.saved_step is not None else record["resumed_from"]
            write("interrupted", step=step, signal=signal_name(error.signum), resume=resume_command(out_dir))
        raise
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        write("failed", error=message, traceback=traceback.format_exc())
        log.error("run failed: %s", message)
        if sweeping and isinstance(error, Exception):
            return {"status": "failed", "error": message}
        raise
    return result


def completed(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The result of a run of this very config that already completed in ``out_dir`` (a sweep skips it)."""
    done = run_folder.read_result(out_dir)
    return done if done and done.get("status") == "ok" and done.get("config_hash") == config_hash(cfg) else None


def run_place() -> dict[str, Any]:
    """Where a run ran, for its result.json."""
    return {"slurm_job_id": slurm_job_id(), "host": os.uname().nodename, "pid": os.getpid()}


def run_logger(cfg: DictConfig, out_dir: Path, resumed_from: int = 0) -> AbstractContextManager[Any]:
    """``logger=tensorboard``: a row hook writing TensorBoard events (``with`` it: its exit writes the
    HParams row, failed or not); ``logger=csv``: no hook, metrics.csv is the whole record."""
    return run_events(cfg, out_dir, resumed_from) or nullcontext(None)


def run_events(cfg: DictConfig, out_dir: Path, resumed_from: int = 0) -> RunEvents | None:
    """The run's TensorBoard events (:class:`vaecli.tensorboard_log.RunEvents`) under ``logger=tensorboard``,
    its earlier events cut back to ``resumed_from`` when it continues from a checkpoint."""
    if cfg.logger.name != "tensorboard":
        return None
    from vaecli.tensorboard_log import RunEvents

    shown = {key: value for key, value in resuming.deciding_config(cfg).items() if key != "logger"}  # HParams columns
    return RunEvents(out_dir, shown, data=(cfg.data.name, cfg.data.root), resumed_from=resumed_from)


def train_and_save(
    cfg: DictConfig,
    out_dir: Path,
    threads: int,
    interactive: bool,
    resume: dict | None,
    write: Callable[..., None],
    on_row: RowHook | None = None,
) -> dict[str, Any]:
    """Train with progress on the terminal (checkpoints on the way), record the outcome, draw the figures.

    A stopped run records "interrupted" before drawing, so a launcher that kills it soon after
    (submitit's local controller gives a task one second) still leaves an honest result.json.
    """
    import torch
    from rich.console import Console

    from vaecli import evaluation
    from vaecli.train import no_row_hook
    from vaecli.train import train as train_loop

    torch.set_num_threads(threads)
    console = Console(stderr=True)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    def say(message: str) -> None:
        log.info(message)
        if interactive:
            console.print(f"[dim]{message}[/dim]")

    if not config_module.test_held_out(cfg):
        log.warning(config_module.NOT_HELD_OUT)
        if interactive:
            console.print(f"[yellow]warning: {config_module.NOT_HELD_OUT}[/yellow]")
    with TrainingProgress(console, enabled=interactive and cfg.train.progress) as progress:
        hook = progress.update if progress.enabled else None
        result = train_loop(cfg, out_dir, on_progress=hook, say=say, resume=resume, on_row=on_row or no_row_hook)
    outcome = {"step": result.steps, "steps": result.total, "train_seconds": round(result.seconds, 3)}
    if result.stopped_by is not None:
        name, command = signal_name(result.stopped_by), resume_command(out_dir)
        write("interrupted", **outcome, signal=name, resume=command, final=result.final)
        log.info("stopped by %s at step %s; %s", name, result.steps, command)
        draw_run_figures(result, out_dir, cfg)
        return {"status": "interrupted", **outcome}
    draw_run_figures(result, out_dir, cfg)
    if interactive:
        print_summary(Console(), result.final, out_dir, result.steps, result.seconds, config_module.test_held_out(cfg))
    bound = evaluation.after_training(cfg, result.model, result.test.images, out_dir, interactive)  # eval.iwae_k
    write("ok", **outcome, final=result.final, **bound)
    log.info("wrote %s", out_dir)
    return {"status": "ok", **outcome, "final": result.final, **bound}


def save_run(
    cfg: DictConfig,
    out_dir: Path,
    result,
    rng: dict[str, Any],
    training: dict | None = None,
    figures: bool = True,
    loss_figure: bool = True,
) -> dict:
    """A trained model's checkpoint.pt and (with ``figures``) its figures; returns result.json's summary fields.

    For models trained outside :func:`vaecli.train.train` (batched sweep members), whose loop does not
    save its own checkpoints; ``result`` has a :class:`vaecli.train.TrainResult`'s fields. With
    ``figures`` (a finished member) it also runs ``eval.iwae_k``'s evaluation, as `vae train` does;
    ``loss_figure`` False leaves loss.png to whoever drew it.
    """
    from vaecli import checkpoint, evaluation

    checkpoint.save(
        out_dir / run_folder.CHECKPOINT,
        config=OmegaConf.to_container(cfg, resolve=True),
        model=result.model,
        optimizer=result.optimizer,
        step=result.steps,
        rng=rng,
        final=result.final,
        training=training,
    )
    summary = {"step": result.steps, "steps": result.total, "train_seconds": round(result.seconds, 3)}
    if figures:
        draw_run_figures(result, out_dir, cfg, loss=loss_figure)
        summary.update(evaluation.after_training(cfg, result.model, result.test.images, out_dir, interactive=False))
    return {**summary, "final": result.final}


class TrainingProgress:
    """A rich progress bar (step, loss, images/s, ETA) that starts with the first step."""

    def __init__(self, console, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task_id = self.bar.add_task("train", total=None, loss=float("nan"), rate=0.0)

    def update(self, step: int, steps: int, loss: float, rate: float) -> None:
        if not self.bar.live.is_started:  # only once training runs: data messages print plainly before
            self.bar.start()
        self.bar.update(self.task_id, completed=step, total=steps, loss=loss, rate=rate)

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def draw_run_figures(result, out_dir: Path, cfg: DictConfig, loss: bool = True) -> None:
    """loss.png (unless ``loss`` is False: drawn elsewhere), reconstructions.png and traversal.png."""
    from vaecli import images, latents

    if loss:
        draw_loss_figure(result.rows, out_dir, cfg)
    files = {"reconstructions": run_folder.RECONSTRUCTIONS_PNG, "traversal": run_folder.TRAVERSAL_PNG}
    for name, (tiles, columns) in latents.run_pictures(result.model.eval(), result.test.images).items():
        images.save_grid(tiles, out_dir / files[name], columns)


def draw_loss_figure(rows: list[dict[str, Any]], out_dir: Path, cfg: DictConfig) -> None:
    """loss.png from the metrics rows alone (no model: a process without the model's device can draw it)."""
    import pandas as pd

    from vaecli import plots

    title = f"beta={cfg.beta}, latent_size={cfg.latent_size}"
    plots.loss_plot(pd.DataFrame(rows), out_dir / run_folder.LOSS_PNG, title=title)


def print_summary(
    console, final: dict[str, dict[str, float]], out_dir: Path, steps: int, seconds: float, held_out: bool = True
) -> None:
    from rich.table import Table

    nats_are = next(iter(final.values()), {}).get("nats_are", "")  # *_nats: log-likelihood or cross-entropy
    title = f"{steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):,.0f} steps/s); nats are a {nats_are}"
    if not held_out:
        title += "\n[yellow]test* = images it trained on (data.train_on=all): not held out[/yellow]"
    table = Table(title=title)
    table.add_column("split")
    for column in SUMMARY_COLUMNS:
        table.add_column(column.replace("reconstruction", "recon"), justify="right", no_wrap=True)
    for split, row in final.items():
        seed_units = ("loss", "reconstruction", "kl")
        label = split if held_out or split != "test" else "test*"
        table.add_row(label, *(f"{row[c]:.4f}" if c in seed_units else f"{row[c]:.2f}" for c in SUMMARY_COLUMNS))
    console.print(table)
    console.print(f"run folder: [bold]{out_dir}[/bold]")
