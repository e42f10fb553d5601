"""One run from end to end: pre-flight checks, the Hydra task, then checkpoint, figures and summary.

``vae train`` checks its overrides, device and data before Hydra makes a folder, then runs
:func:`task` through Hydra's main. The same task serves every member of ``vae sweep``
(multirun): there a member never raises but records its failure in result.json, so the other
members go on and aggregation sees every member's status, whatever the launcher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaecli import config as config_module
from vaecli import run_folder
from vaecli.errors import RunError, VaeError, first_line
from vaecli.hydra_bridge import compose, has_key, print_config, quote_value, run_hydra
from vaecli.runtime import pick_device, slurm_job_id, threads_for

log = logging.getLogger("vaecli")
RECONSTRUCTION_COUNT = 8
SUMMARY_COLUMNS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")
# what may differ between runs without changing their results
PLACE_KEYS = ((None, "device"), (None, "threads"), ("data", "root"), ("train", "progress"))

config_module.register()  # launchers unpickle `task` in fresh processes: the schema must be known there


# ----------------------------------------------------------------------------- before Hydra


def train(overrides: Sequence[str], cfg_flag: str | None = None, resolve: bool = False) -> Path:
    """``vae train``: check everything, then run one training through Hydra; returns the run folder."""
    if cfg_flag is not None:
        print_config(overrides, cfg_flag, resolve, task)
        return Path.cwd()
    composed = compose(overrides, with_hydra=True)
    preflight([composed])
    run_dir = Path(composed.hydra.run.dir)
    arguments = list(overrides)
    if not has_key(overrides, "hydra.run.dir"):
        run_dir = run_folder.fresh_folder(run_dir)
        arguments.append(f"hydra.run.dir={quote_value(str(run_dir))}")
    try:
        run_hydra(task, arguments)
    except VaeError:
        raise
    except KeyboardInterrupt:
        raise RunError("interrupted; the run folder keeps what was written so far") from None
    except (RuntimeError, OSError, ValueError) as error:
        raise RunError(f"{type(error).__name__}: {first_line(error)}") from None
    return run_dir


def preflight(configs: Iterable[DictConfig]) -> None:
    """Device and data checked before Hydra makes folders: a run that cannot start leaves none behind."""
    from vaecli.datasets import ensure_data

    configs = list(configs)
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
    fingerprint = config_hash(cfg)
    if sweeping:
        done = run_folder.read_result(out_dir)
        if done and done.get("status") == "ok" and done.get("config_hash") == fingerprint:
            log.info("already completed with this config; skipped")
            return done
    started = time.time()
    where = {"slurm_job_id": slurm_job_id(), "host": os.uname().nodename, "pid": os.getpid()}
    run_folder.write_result(out_dir, status="running", started=started, config_hash=fingerprint, **where)
    threads = threads_for(cfg.threads, hydra_cfg.launcher if sweeping else None)
    try:
        result = train_and_save(cfg, out_dir, threads=threads, interactive=not sweeping)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        elapsed = round(time.time() - started, 3)
        failure = {"error": message, "seconds": elapsed, "config_hash": fingerprint, **where}
        run_folder.write_result(out_dir, status="failed", **failure, traceback=traceback.format_exc())
        log.error("run failed: %s", message)
        if sweeping and isinstance(error, Exception):
            return {"status": "failed", "error": message}
        raise
    elapsed = round(time.time() - started, 3)
    run_folder.write_result(out_dir, status="ok", seconds=elapsed, config_hash=fingerprint, **where, **result)
    return {"status": "ok", **result}


def config_hash(cfg: DictConfig) -> str:
    """What decides a run's results: the resolved config without where and how fast it runs."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for section, key in PLACE_KEYS:
        (container[section] if section else container).pop(key, None)  # type: ignore[index, union-attr]
    return hashlib.sha256(json.dumps(container, sort_keys=True).encode()).hexdigest()[:16]


def train_and_save(cfg: DictConfig, out_dir: Path, threads: int, interactive: bool) -> dict[str, Any]:
    """Train with progress on the terminal, then write the checkpoint, the figures and the summary."""
    import torch
    from rich.console import Console

    from vaecli import checkpoint, evaluation
    from vaecli.train import train as train_loop

    torch.set_num_threads(threads)
    console = Console(stderr=True)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    def say(message: str) -> None:
        log.info(message)
        if interactive:
            console.print(f"[dim]{message}[/dim]")

    with TrainingProgress(console, enabled=interactive and cfg.train.progress) as progress:
        result = train_loop(cfg, out_dir, on_progress=progress.update if progress.enabled else None, say=say)
    checkpoint.save(
        out_dir / run_folder.CHECKPOINT,
        config=OmegaConf.to_container(cfg, resolve=True),
        model=result.model,
        optimizer=result.optimizer,
        step=result.steps,
        rng={"torch": torch.get_rng_state(), "shuffle": result.shuffle_state, **result.binarize_state},
        final=result.final,
    )
    draw_run_figures(result, out_dir, cfg)
    if interactive:
        print_summary(Console(), result.final, out_dir, result.steps, result.seconds)
    bound = evaluation.after_training(cfg, result.model, result.test.images, out_dir, interactive)  # eval.iwae_k
    log.info("wrote %s", out_dir)
    return {"steps": result.steps, "train_seconds": round(result.seconds, 3), "final": result.final, **bound}


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


def draw_run_figures(result, out_dir: Path, cfg: DictConfig) -> None:
    import pandas as pd
    import torch

    from vaecli import images, latents, plots

    model = result.model.eval()
    title = f"beta={cfg.beta}, latent_size={cfg.latent_size}"
    plots.loss_plot(pd.DataFrame(result.rows), out_dir / run_folder.LOSS_PNG, title=title)
    originals = result.test.images[:RECONSTRUCTION_COUNT].cpu()
    reconstructions = latents.reconstructions(model, originals)
    pair = torch.cat([originals, reconstructions])
    images.save_grid(pair, out_dir / run_folder.RECONSTRUCTIONS_PNG, RECONSTRUCTION_COUNT)
    images.save_grid(latents.traversal_grid(model), out_dir / run_folder.TRAVERSAL_PNG, columns=10)


def print_summary(console, final: dict[str, dict[str, float]], out_dir: Path, steps: int, seconds: float) -> None:
    from rich.table import Table

    nats_are = next(iter(final.values()), {}).get("nats_are", "")  # *_nats: log-likelihood or cross-entropy
    title = f"{steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):,.0f} steps/s); nats are a {nats_are}"
    table = Table(title=title)
    table.add_column("split")
    for column in SUMMARY_COLUMNS:
        table.add_column(column.replace("reconstruction", "recon"), justify="right", no_wrap=True)
    for split, row in final.items():
        seed_units = ("loss", "reconstruction", "kl")
        table.add_row(split, *(f"{row[c]:.4f}" if c in seed_units else f"{row[c]:.2f}" for c in SUMMARY_COLUMNS))
    console.print(table)
    console.print(f"run folder: [bold]{out_dir}[/bold]")
