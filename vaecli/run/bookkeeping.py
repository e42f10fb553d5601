"""The loop's bookkeeping, written once for both drivers: the solo loop and the stacked trainer.

A driver differs only in how it steps its parameters. Everything a reader of metrics.csv or a
checkpoint relies on is decided here, so a batched member and a solo run agree on it by
construction: which steps log and evaluate, steps per epoch, the loop position and its checkpoint
form, when a checkpoint is due, a row's images/s and seconds, and how divergence is worded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vaecli.config.schema import AUTO_CHECKPOINT_SECONDS
from vaecli.data.tensors import steps_per_epoch
from vaecli.errors import RunError

# ----------------------------------------------------------------------------- the schedule


def log_steps(total: int) -> list[int]:
    """The seed's schedule: 1, 2, 4, ... up to ``total``, and ``total`` itself."""
    steps = [2**k for k in range(int(math.log2(total)) + 1)]
    return steps if steps[-1] == total else [*steps, total]


def eval_steps(total: int, every: int | None) -> set[int]:
    """Test-set evaluations: by default at 1, 4, 16, 64, ... (every other logged step) and the end.

    Each costs about as much as 30 training steps on a 2-core CPU, so not every logged step.
    """
    if every is None:
        return {*(4**k for k in range(int(math.log(total, 4)) + 1) if 4**k <= total), total}
    if every == 0:
        return {total}
    return {*range(every, total + 1, every), total}


def progress_every(total: int) -> int:
    """How often the progress bar (and the stacked trainer's check) looks at a step."""
    return max(1, min(16, total // 100))


def total_steps(cfg: Any, examples: int) -> int:
    """``train.steps``, or ``train.epochs`` passes over ``examples`` images rounded up to a whole step."""
    if cfg.train.epochs is None:
        return int(cfg.train.steps)
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch(examples, int(cfg.train.batch_size))))


class Schedule:
    """Which steps of a run write a train row, run a test evaluation, or are looked at at all."""

    def __init__(self, total: int, eval_every: int | None):
        self.total = total
        self.logged, self.evaluated = set(log_steps(total)), eval_steps(total, eval_every)
        self.every = progress_every(total)

    def checks(self, step: int) -> bool:
        return step in self.logged or step in self.evaluated or step % self.every == 0


# ----------------------------------------------------------------------------- position and timing


@dataclass
class Position:
    """Where the loop stands, besides weights, optimizer and RNG states; saved in every checkpoint."""

    step: int = 0
    seconds: float = 0.0  # training wall time so far (evaluations included), over every session of the run
    eval_seconds: float = 0.0
    last_log_step: int = 0  # the last train row: images_per_s counts from there
    last_log_seconds: float = 0.0
    rows: int = 0  # metrics.csv rows written up to ``step``

    def checkpoint_block(
        self, total_steps: int, epoch: float, images: int, order: torch.Tensor | None, rows: int
    ) -> dict[str, Any]:
        """The checkpoint's ``training`` block: this position with ``rows`` rows, and the batch order."""
        return {
            "position": {**asdict(self), "rows": rows},
            "total_steps": total_steps,
            "epoch": epoch,
            "images": images,
            "order": None if order is None else order.to(torch.int32),
        }

    @classmethod
    def from_checkpoint(cls, training: dict[str, Any], images: int) -> Position:
        """The position a checkpoint's ``training`` block holds, refused when the data changed size."""
        if training["images"] != images:
            raise RunError(f"the checkpoint trained on {training['images']} images, the data gives {images}")
        return cls(**training["position"])


class RowClock:
    """Wall time of a run across its sessions, and the timing columns of its metrics rows.

    ``images_per_s`` counts training time only: the time of test evaluations is moved out of it.
    """

    def __init__(self, position: Position):
        self.position = position
        self.zero = time.perf_counter() - position.seconds  # perf_counter() at step 0 of the run

    def start(self) -> None:
        """Count from now on, continuing the seconds the position holds."""
        self.zero = time.perf_counter() - self.position.seconds

    def elapsed(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.zero

    def tick(self) -> None:
        self.position.seconds = self.elapsed()

    def train_row(self, step: int, batch_size: int, now: float) -> dict[str, float]:
        """A train row's ``images_per_s`` (since the last train row) and ``seconds``; moves the mark."""
        position = self.position
        since = now - (self.zero + position.last_log_seconds)
        timing = {
            "images_per_s": round((step - position.last_log_step) * batch_size / max(since, 1e-9), 1),
            "seconds": round(now - self.zero, 4),
        }
        position.last_log_step, position.last_log_seconds = step, now - self.zero
        return timing

    def test_row(self) -> dict[str, Any]:
        return {"images_per_s": "", "seconds": round(time.perf_counter() - self.zero, 4)}

    def rate(self, step: int, batch_size: int, now: float) -> float:
        """Images per second over the whole run so far, for the progress bar."""
        return step * batch_size / max(now - self.zero, 1e-9)

    @contextmanager
    def evaluation(self) -> Iterator[None]:
        """Time spent inside counts as evaluation, and not in the next train row's images_per_s."""
        started = time.perf_counter()
        yield
        spent = time.perf_counter() - started
        self.position.eval_seconds += spent
        self.position.last_log_seconds += spent


class CheckpointClock:
    """When a checkpoint is due: every ``train.checkpoint_every`` steps, or when that is null, after
    AUTO_CHECKPOINT_SECONDS, so a kill loses at most that much work; 0 means only at the end."""

    def __init__(self, every: int | None):
        self.every = every
        self.last_save = time.perf_counter()

    def due(self, step: int, now: float) -> bool:
        if self.every is None:
            return now - self.last_save >= AUTO_CHECKPOINT_SECONDS
        return self.every > 0 and step % self.every == 0

    def saved(self) -> None:
        self.last_save = time.perf_counter()


# ----------------------------------------------------------------------------- divergence


class TrainingDiverged(RunError):
    """The loss became NaN or infinite; the message names the update that broke the model."""


def broken_forward(first: int) -> str:
    """The divergence message when the forward pass of step ``first`` was the first to give NaN or inf."""
    return diverged(first - 1, f"the forward pass of step {first} gave NaN or inf")


def diverged(update: int, symptom: str) -> str:
    """The divergence message: which update broke the weights, and how that showed."""
    culprit = f"at the update of step {update}" if update else "before the first update"
    return f"training diverged {culprit} ({symptom}): the weights became NaN, inf or too large; try a smaller train.lr"


def loss_diverged(loss: float, step: int) -> str:
    return f"loss became {loss} at step {step}; try a smaller train.lr"


def weights_diverged(step: int) -> str:
    return f"weights became non-finite at step {step}; try a smaller train.lr"


class DivergenceWatch:
    """Finds the update that broke a model, exactly, for about one reduction per step.

    The loss is computed only at scheduled steps, so when it shows NaN the update that broke the
    model may lie many steps back. NaN or inf in any weight reaches the next forward pass (NaN * 0
    is NaN, and ReLU keeps NaN), and so do finite weights too large to use; so after every update
    this adds up the logits and the KL term (computed anyway) and notes the first step whose sum is
    NaN or inf: the update before it broke the model. On a CPU reading that sum costs nothing more;
    on a GPU the note stays on the device (no host sync per step) and is read only where the loop
    reads the loss anyway. Cost: benchmarks/divergence_watch.py. With ``members`` it watches each
    member of a stacked model (one sum each, notes on the device), as its solo loop would.
    """

    def __init__(self, device: torch.device, on_host: bool | None = None, members: int | None = None):
        self.on_host = members is None and (device.type == "cpu" if on_host is None else on_host)
        shape = () if members is None else (members,)
        self.first: Any = 0 if self.on_host else torch.zeros(shape, dtype=torch.int64, device=device)  # 0: none yet

    def observe(self, step: int, logits: torch.Tensor, kl_term: torch.Tensor) -> None:
        """One model: the sum of its logits and its weighted KL term."""
        self.observe_totals(step, logits.detach().sum().add_(kl_term))

    def observe_totals(self, step: int, total: torch.Tensor) -> None:
        """The step's sum for the model (a scalar) or for each member (a vector)."""
        if not self.on_host:
            self.first.masked_fill_(self.first.eq(0).logical_and_(total.isfinite().logical_not_()), step)
        elif not self.first and not math.isfinite(total.item()):
            self.first = step

    def firsts(self) -> list[int]:
        """Per member, the first step whose forward pass gave NaN or inf (0: none)."""
        return self.first.tolist()

    def select(self, keep: list[int]) -> None:
        """Keep the notes of these members only (the others left the stacks)."""
        self.first = self.first[torch.tensor(keep, dtype=torch.int64, device=self.first.device)]

    def check(self, step: int, loss: float) -> None:
        """Raise :class:`TrainingDiverged` naming the update that broke the model, if one did."""
        first = int(self.first)
        if first:
            raise TrainingDiverged(broken_forward(first))
        if not math.isfinite(loss):
            raise TrainingDiverged(loss_diverged(loss, step))


def first_non_finite(row: dict[str, Any]) -> str | None:
    """The first column of a metrics row that is NaN or inf: such a row is divergence, never written."""
    return next((key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)), None)
