"""A whole run's artifacts: progress while training, then checkpoint, figures and summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vaecli import checkpoint, figures, views
from vaecli.train import train

log = logging.getLogger("vaecli")
RECONSTRUCTION_COUNT = 8
SUMMARY_COLUMNS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:,.0f} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def train_and_save(cfg: DictConfig, out_dir: Path, threads: int, interactive: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    def say(message: str) -> None:
        log.info(message)
        if interactive:
            console.print(f"[dim]{message}[/dim]")

    if interactive and cfg.train.progress:
        bar = progress_bar(console)
        task_id = bar.add_task("train", total=None, loss=float("nan"), rate=0.0)

        def on_progress(step: int, steps: int, loss: float, rate: float) -> None:
            if not bar.live.is_started:  # only once training runs: data messages print plainly before
                bar.start()
            bar.update(task_id, completed=step, total=steps, loss=loss, rate=rate)

        try:
            result = train(cfg, out_dir, on_progress=on_progress, say=say)
        finally:
            bar.stop()
    else:
        result = train(cfg, out_dir, say=say)

    checkpoint.save(
        out_dir / checkpoint.CHECKPOINT_NAME,
        config=OmegaConf.to_container(cfg, resolve=True),
        model=result.model,
        optimizer=result.optimizer,
        step=result.steps,
        rng={"torch": torch.get_rng_state(), "shuffle": result.shuffle_state},
        final=result.final,
    )
    draw_run_figures(result, out_dir, cfg)
    if interactive:
        print_summary(Console(), result.final, out_dir, result.steps, result.seconds)
    log.info("wrote %s", out_dir)
    return {"steps": result.steps, "train_seconds": round(result.seconds, 3), "final": result.final}


def draw_run_figures(result, out_dir: Path, cfg: DictConfig) -> None:
    model = result.model.eval()
    metrics = pd.DataFrame(result.rows)
    figures.loss_plot(metrics, out_dir / "loss.png", title=f"beta={cfg.beta}, latent_size={cfg.latent_size}")
    device = next(model.parameters()).device
    originals = result.test.images[:RECONSTRUCTION_COUNT]
    reconstructions = model.reconstruct(originals.to(device)).cpu()
    figures.save_grid(
        torch.cat([originals, reconstructions]),
        out_dir / "reconstructions.png",
        RECONSTRUCTION_COUNT,
    )
    figures.save_grid(views.traversal_grid(model), out_dir / "traversal.png", columns=10)


def print_summary(
    console: Console, final: dict[str, dict[str, float]], out_dir: Path, steps: int, seconds: float
) -> None:
    table = Table(title=f"{steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):,.0f} steps/s)")
    table.add_column("split")
    for column in SUMMARY_COLUMNS:
        table.add_column(column.replace("reconstruction", "recon"), justify="right", no_wrap=True)
    for split, row in final.items():
        table.add_row(
            split,
            *(
                f"{row[column]:.4f}" if column in ("loss", "reconstruction", "kl") else f"{row[column]:.2f}"
                for column in SUMMARY_COLUMNS
            ),
        )
    console.print(table)
    console.print(f"run folder: [bold]{out_dir}[/bold]")
