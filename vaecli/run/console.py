"""What a run shows on the terminal: its messages, a progress bar while it trains, the summary table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaecli.objectives.terms import SEED_UNIT_TERMS, TERM_NAMES

log = logging.getLogger("vaecli")


def sayer(console: Any, interactive: bool) -> Callable[[str], None]:
    """A message goes to train.log, and to the terminal (dim) when a person is watching."""

    def say(message: str) -> None:
        log.info(message)
        if interactive:
            console.print(f"[dim]{message}[/dim]")

    return say


class TrainingProgress:
    """A rich progress bar (step, loss, images/s, ETA) that starts with the first step; off when not enabled."""

    def __init__(self, console: Any, enabled: bool):
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

    @property
    def hook(self) -> Callable[[int, int, float, float], None] | None:
        """What the loop calls at its checked steps, or None when the bar is off."""
        return self.update if self.enabled else None

    def update(self, step: int, steps: int, loss: float, rate: float) -> None:
        if not self.bar.live.is_started:  # only once training runs: data messages print plainly before
            self.bar.start()
        self.bar.update(self.task_id, completed=step, total=steps, loss=loss, rate=rate)

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


NOT_TERMS = ("step", "epoch", "split", "held_out", "images_per_s", "seconds", "eval_seconds", "nats_are")


def print_summary(
    console: Any, final: dict[str, dict[str, float]], out_dir: Path, steps: int, seconds: float, held_out: bool = True
) -> None:
    """The table at the end of a run: its last train and test rows, in the seed's units and in nats."""
    from rich.table import Table

    nats_are = next(iter(final.values()), {}).get("nats_are", "")  # *_nats: log-likelihood or cross-entropy
    title = f"{steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):,.0f} steps/s); nats are a {nats_are}"
    if not held_out:
        title += "\n[yellow]test* = images it trained on (data.train_on=all): not held out[/yellow]"
    table = Table(title=title)
    table.add_column("split")
    for column in TERM_NAMES:
        table.add_column(column.replace("reconstruction", "recon"), justify="right", no_wrap=True)
    for split, row in final.items():
        label = split if held_out or split != "test" else "test*"
        table.add_row(label, *(f"{row[c]:.4f}" if c in SEED_UNIT_TERMS else f"{row[c]:.2f}" for c in TERM_NAMES))
    console.print(table)
    first = next(iter(final.values()), {})
    own = [key for key in first if key not in TERM_NAMES and key not in NOT_TERMS]  # the objective's own terms
    if own:
        terms = Table(title="the objective's own terms (*_nats: nats per image)")
        terms.add_column("split")
        for column in own:
            terms.add_column(column, justify="right", no_wrap=True)
        for split, row in final.items():
            label = split if held_out or split != "test" else "test*"
            terms.add_row(label, *(f"{row[c]:.4g}" if isinstance(row.get(c), float) else "" for c in own))
        console.print(terms)
    console.print(f"run folder: [bold]{out_dir}[/bold]")
