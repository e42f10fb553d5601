"""The training loop: Adam on the run's objective, metrics rows at powers of two, test evaluations, checkpoints.

Kept lean on purpose: the hot loop does one slice, one forward, one backward and one fused
Adam step, then reads one flag (a stop request) and one clock (the checkpoint interval);
everything else (logging, evaluation, progress, checkpoints) happens only at scheduled steps.
A checkpoint holds everything the loop needs to go on exactly where it was (weights, optimizer,
RNG and shuffle states, the epoch's permutation, the schedules' position, timing counters), so
a run stopped and continued ends with the weights and metrics.csv of one that never stopped.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vaecli.config.runtime import pick_device, settle_threads
from vaecli.config.schema import test_held_out
from vaecli.data.sources import DataFile
from vaecli.data.tensors import Batches, Split, batch_binarizer, binarized, load_split, training_set
from vaecli.models.likelihoods import run_nats_label
from vaecli.models.mlp import VAE
from vaecli.models.registry import build_model, initialise_from_data
from vaecli.objectives.beta import batch_metrics
from vaecli.objectives.registry import Objective, build_objective, start_objective
from vaecli.run.bookkeeping import (
    CheckpointClock,
    DivergenceWatch,
    Position,
    RowClock,
    Schedule,
    TrainingDiverged,
    diverged,
    first_non_finite,
    total_steps,
)
from vaecli.run.schedules import lr_changes, set_lr
from vaecli.run.signals import STOP, Interrupted, StopRequests
from vaecli.runfolder import checkpoint, provenance
from vaecli.runfolder.files import CHECKPOINT, METRICS_CSV
from vaecli.runfolder.metrics import MetricsWriter

log = logging.getLogger(__name__)


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    device: torch.device,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Adam:
    """Fused Adam where the device supports it: one kernel instead of a dozen per tensor."""
    settings = {"lr": lr, "betas": tuple(betas), "eps": eps}
    try:
        return torch.optim.Adam(model.parameters(), **settings, fused=device.type in ("cpu", "cuda", "mps"))
    except RuntimeError:
        return torch.optim.Adam(model.parameters(), **settings)


@dataclass
class TrainResult:
    model: VAE
    optimizer: torch.optim.Optimizer
    steps: int  # the step reached
    total: int  # the steps the config asks for
    rows: list[dict[str, Any]]
    test: Split
    seconds: float
    eval_seconds: float
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    stopped_by: int | None = None  # the signal that stopped the run before ``total``
    resumed_from: int = 0


ProgressHook = Callable[[int, int, float, float], None]
RowHook = Callable[[dict[str, Any], VAE], None]  # called with each metrics row just written, and the model


def no_row_hook(row: dict[str, Any], model: VAE) -> None:
    """The default :data:`RowHook`: metrics.csv is the whole record."""


def train_model(
    cfg: Any,
    out_dir: Path,
    on_progress: ProgressHook | None = None,
    say: Callable[[str], None] = log.info,
    resume: dict[str, Any] | None = None,
    stop: StopRequests = STOP,
    on_row: RowHook = no_row_hook,
) -> TrainResult:
    """The loop alone: one model trained as ``cfg`` says, writing metrics.csv and checkpoint.pt into ``out_dir``.

    No result.json, figures or summary (those are :mod:`vaecli.run.task`'s): what the benchmarks time
    and the stacked trainer's tests compare with.

    ``resume`` is a loaded checkpoint of this run to continue from; ``stop`` ends the run after
    the step during which a stop was requested, with a checkpoint of that step.
    """
    return Loop(cfg, out_dir, say, resume, on_row).run(on_progress, stop)


class Loop:
    """One session of a run's training: from step 0, or from a checkpoint's position."""

    def __init__(
        self,
        cfg: Any,
        out_dir: Path,
        say: Callable[[str], None],
        resume: dict[str, Any] | None,
        on_row: RowHook = no_row_hook,
    ):
        self.cfg, self.out_dir, self.say, self.on_row = cfg, out_dir, say, on_row
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.device = device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        train_images, self.test, self.data_files = load_data(cfg, say)
        self.images, self.test_images = train_images.to(device), self.test.images.to(device)
        self.model = build_model(cfg).to(device)
        initialise_from_data(self.model, self.images)
        self.objective = build_objective(cfg)
        self.optimizer = make_optimizer(
            self.model, cfg.train.lr, device, tuple(cfg.train.adam_betas), cfg.train.adam_eps
        )
        self.watch = DivergenceWatch(device)
        self.shuffler = torch.Generator().manual_seed(cfg.seed)
        self.binarizer = batch_binarizer(cfg.data.binarize, cfg.seed, device)  # data.binarize=dynamic only
        self.batches = Batches(self.images, cfg.train.batch_size, cfg.train.shuffle, self.shuffler, self.binarizer)
        self.steps = total_steps(cfg, len(self.images))
        self.new_lr = lr_changes(cfg.train, self.batches.per_epoch, self.steps)  # {step: lr} where a stage starts
        start_objective(self.objective, len(self.images), self.steps, device)
        self.schedule = Schedule(self.steps, cfg.train.eval_every)
        self.position = Position()
        if resume is not None:
            self.restore(resume)
        self.threads = self.pick_threads(resume)
        keep = self.position.rows if resume else None
        self.metrics = MetricsWriter(
            out_dir / METRICS_CSV,
            keep=keep,
            test_held_out=test_held_out(cfg),
            nats_are=run_nats_label(cfg),
            columns=getattr(self.objective, "columns", ()),
        )
        self.saved_step = self.position.step if resume else None
        self.clock = RowClock(self.position)
        self.checkpoints = CheckpointClock(cfg.train.checkpoint_every)

    def pick_threads(self, resume: dict[str, Any] | None) -> int:
        """``threads=0`` on the CPU: the count a run began with when it continues (a different count
        changes the sums' order, and a resumed run must equal an uninterrupted one bit for bit), else the
        fastest count now, at most the CPUs this run may use (set by its session)."""
        most = torch.get_num_threads()
        if self.cfg.threads or self.device.type != "cpu":
            return most
        recorded = int((resume["training"].get("threads") if resume else 0) or 0)
        return settle_threads(self.probe_step, most, recorded, self.say)

    def probe_step(self) -> Callable[[], None]:
        """A training step's arithmetic on a copy of the model (the run's weights, optimizer and random
        streams untouched): what :func:`fastest_threads` times."""
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
        x = self.images[: self.batches.batch_size]
        with torch.random.fork_rng(devices=[]):  # a discriminator's init draws random numbers
            objective = build_objective(self.cfg)
        start_objective(objective, len(self.images), self.steps, self.device)

        def step() -> None:
            with torch.random.fork_rng(devices=[]):
                q, z, p = model(x)
                optimizer.zero_grad(set_to_none=True)
                objective.backward(q, p.logits, x, z=z, step=1)
                optimizer.step()

        return step

    def restore(self, payload: dict[str, Any]) -> None:
        """Weights, optimizer (its staged lr included), RNG, shuffle and binarizer states and the position."""
        state, rng = payload["training"], payload["rng"]
        position = Position.from_checkpoint(state, len(self.images))
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if hasattr(self.objective, "load_state_dict"):  # a FactorVAE's discriminator and its Adam
            self.objective.load_state_dict(payload.get("objective") or {})
        torch.set_rng_state(rng["torch"])
        self.shuffler.set_state(rng["shuffle"])
        if self.binarizer is not None:
            self.binarizer.set_state(rng["binarize"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if state["order"] is not None:
            self.batches.order = state["order"].to(torch.int64).to(self.device)
        self.position = position

    def run(self, on_progress: ProgressHook | None, stop: StopRequests) -> TrainResult:
        model, optimizer, batches, position = self.model, self.optimizer, self.batches, self.position
        objective, start, schedule = self.objective, position.step, self.schedule
        where = f"{len(self.images)} {self.cfg.data.name} images ({self.device}, {torch.get_num_threads()} threads)"
        self.say(
            f"continuing at step {start + 1} of {self.steps} on {where}"
            if start
            else f"training {self.steps} steps on {where}"
        )
        if hasattr(model, "describe"):  # how an architecture adapted to this data's images
            self.say(model.describe())
        record = provenance.collect(self.cfg, self.device, torch.get_num_threads(), self.data_files)
        provenance.write(self.out_dir, record, start)
        self.checkpoints.saved()
        self.clock.start()
        try:
            for step in range(start + 1, self.steps + 1):
                if step in self.new_lr:
                    set_lr(optimizer, self.new_lr[step])
                x = batches.batch(step)
                q, z, p = model(x)
                optimizer.zero_grad(set_to_none=True)
                kl_term = objective.backward(q, p.logits, x, z=z, step=step)
                optimizer.step()
                self.watch.observe(step, p.logits, kl_term)
                if schedule.checks(step):
                    self.record(step, q, z, p.logits, x, on_progress)
                position.step = step
                now = time.perf_counter()
                if stop.requested(now):
                    break
                if self.checkpoints.due(step, now):
                    self.save()
            if self.saved_step != position.step:
                self.save()
        except Interrupted as error:
            error.saved_step = self.saved_step
            raise
        finally:
            self.metrics.close()
        stopped_by = stop.signum if position.step < self.steps else None
        return TrainResult(
            model,
            optimizer,
            position.step,
            self.steps,
            self.metrics.rows,
            self.test,
            position.seconds,
            position.eval_seconds,
            self.final(),
            stopped_by,
            start,
        )

    def record(
        self, step: int, q, z: torch.Tensor, logits: torch.Tensor, x: torch.Tensor, on_progress: ProgressHook | None
    ) -> None:
        """The scheduled work of a step: its train row, a test evaluation, the progress bar."""
        batch_size, clock = self.batches.batch_size, self.clock
        with torch.no_grad():
            terms = self.objective.terms(q, logits, x, z=z, step=step)
        loss = float(terms.loss)
        self.watch.check(step, loss)
        now = time.perf_counter()
        epoch = round(self.batches.epoch(step), 4)
        if step in self.schedule.logged:
            row = {"step": step, "epoch": epoch, "split": "train", **batch_metrics(terms)}
            self.write_row({**row, **clock.train_row(step, batch_size, now)})
            log.info(f"step {step}: loss {row['loss']:.5f}, neg_elbo_nats {row['neg_elbo_nats']:.2f}")
        if step in self.schedule.evaluated:
            with clock.evaluation():  # the row hook inside it too: images_per_s leaves it out
                row = test_row(self.model, self.objective, self.test_images, self.cfg.seed, step, epoch)
                self.write_row({**row, **clock.test_row()})
        if on_progress is not None:
            on_progress(step, self.steps, loss, clock.rate(step, batch_size, now))

    def write_row(self, row: dict[str, Any]) -> None:
        self.metrics.write(row)
        self.on_row(row, self.model)

    def save(self) -> None:
        """checkpoint.pt for the current step, after the metrics rows it counts are on disk."""
        position = self.position
        self.watch.check(position.step, 0.0)  # never a checkpoint of weights the watch saw break
        self.clock.tick()
        position.rows = len(self.metrics.rows)
        self.metrics.sync()
        checkpoint.save(
            self.out_dir / CHECKPOINT,
            config=self.config,
            model=self.model,
            optimizer=self.optimizer,
            step=position.step,
            rng=self.rng_state(),
            final=self.final(),
            objective=self.objective.state_dict() if hasattr(self.objective, "state_dict") else None,
            training=position.checkpoint_block(
                self.steps, self.batches.epoch(position.step), len(self.images), self.batches.order, position.rows
            )
            | {"threads": self.threads},
        )
        self.saved_step = position.step
        self.checkpoints.saved()

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffler.get_state()}
        if self.binarizer is not None:
            state["binarize"] = self.binarizer.get_state()
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def final(self) -> dict[str, dict[str, Any]]:
        """The last train and test rows so far."""
        last = {row["split"]: row for row in self.metrics.rows}
        return {split: last[split] for split in ("train", "test") if split in last}


def load_data(cfg: Any, say: Callable[[str], None]) -> tuple[torch.Tensor, Split, tuple[DataFile, ...]]:
    """The images to train on (the test set included when ``data.train_on=all``), the test split, the files read."""
    train_split = load_split(cfg.data.name, cfg.data.root, train=True, limit=cfg.data.limit, say=say, options=cfg.data)
    test_split = load_split(
        cfg.data.name, cfg.data.root, train=False, limit=cfg.data.test_limit, say=say, options=cfg.data
    )
    files = train_split.files + test_split.files
    images = training_set(train_split, test_split, cfg.data.train_on, cfg.data.binarize).images
    return images, binarized(test_split, cfg.data.binarize, train=False), files  # grey, or the fixed binary test set


def test_row(
    model: VAE, objective: Objective, images: torch.Tensor, seed: int, step: int, epoch: float
) -> dict[str, Any]:
    """A metrics row for the whole test split, in eval mode; NaN or inf is divergence, never a row."""
    model.eval()
    row = {"step": step, "epoch": epoch, "split": "test", **objective.evaluate(model, images, seed, step)}
    model.train()
    broken = first_non_finite(row)
    if broken is not None:
        raise TrainingDiverged(diverged(step, f"the test evaluation after it gave {broken}={row[broken]}"))
    return row
