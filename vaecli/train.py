"""The training loop: Adam on the beta-ELBO, metrics rows at powers of two, test evaluations, checkpoints.

Kept lean on purpose: the hot loop does one slice, one forward, one backward and one fused
Adam step, then reads one flag (a stop request) and one clock (the checkpoint interval);
everything else (logging, evaluation, progress, checkpoints) happens only at scheduled steps.
A checkpoint holds everything the loop needs to go on exactly where it was (weights, optimizer,
RNG and shuffle states, the epoch's permutation, the schedules' position, timing counters), so
a run stopped and continued ends with the weights and metrics.csv of one that never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vaecli import checkpoint, provenance
from vaecli.config import AUTO_CHECKPOINT_SECONDS, test_held_out
from vaecli.data import Batches, Split, batch_binarizer, binarized, load_split, training_set
from vaecli.datasets import DataFile
from vaecli.errors import RunError
from vaecli.likelihoods import run_nats_label
from vaecli.metrics import MetricsWriter
from vaecli.model import VAE, build_model
from vaecli.objective import backward_beta_elbo, batch_metrics, elbo_terms, evaluate
from vaecli.run_folder import CHECKPOINT, METRICS_CSV
from vaecli.runtime import pick_device
from vaecli.schedules import lr_changes, set_lr
from vaecli.signals import STOP, Interrupted, StopRequests

log = logging.getLogger(__name__)


class TrainingDiverged(RunError):
    """The loss became NaN or infinite; the message names the update that broke the model."""


class DivergenceWatch:
    """Finds the update that broke the model, exactly, for about one reduction per step.

    The loss is computed only at scheduled steps, so when it shows NaN the update that broke the
    model may lie many steps back. NaN or inf in any weight reaches the next forward pass (NaN * 0
    is NaN, and ReLU keeps NaN), and so do finite weights too large to use; so after every update
    this adds up the logits and the KL term (computed anyway) and notes the first step whose sum is
    NaN or inf: the update before it broke the model. On a CPU reading that sum costs nothing more;
    on a GPU the note stays on the device (no host sync per step) and is read only where the loop
    reads the loss anyway. Cost: benchmarks/divergence_watch.py.
    """

    def __init__(self, device: torch.device, on_host: bool | None = None):
        self.on_host = device.type == "cpu" if on_host is None else on_host
        self.first: Any = 0 if self.on_host else torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet

    def observe(self, step: int, logits: torch.Tensor, kl_term: torch.Tensor) -> None:
        total = logits.detach().sum().add_(kl_term)
        if not self.on_host:
            self.first.masked_fill_(self.first.eq(0).logical_and_(total.isfinite().logical_not_()), step)
        elif not self.first and not math.isfinite(total.item()):
            self.first = step

    def check(self, step: int, loss: float) -> None:
        """Raise :class:`TrainingDiverged` naming the update that broke the model, if one did."""
        first = int(self.first)
        if first:
            raise TrainingDiverged(diverged(first - 1, f"the forward pass of step {first} gave NaN or inf"))
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at step {step}; try a smaller train.lr")


def diverged(update: int, symptom: str) -> str:
    """The divergence message: which update broke the weights, and how that showed."""
    culprit = f"at the update of step {update}" if update else "before the first update"
    return f"training diverged {culprit} ({symptom}): the weights became NaN, inf or too large; try a smaller train.lr"


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


def total_steps(cfg: Any, examples: int) -> int:
    if cfg.train.epochs is None:
        return int(cfg.train.steps)
    per_epoch = max(1, examples // min(cfg.train.batch_size, examples))
    return max(1, math.ceil(cfg.train.epochs * per_epoch))


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
class Position:
    """Where the loop stands, besides weights, optimizer and RNG states; saved in every checkpoint."""

    step: int = 0
    seconds: float = 0.0  # training wall time so far (evaluations included), over every session of the run
    eval_seconds: float = 0.0
    last_log_step: int = 0  # the last train row: images_per_s counts from there
    last_log_seconds: float = 0.0
    rows: int = 0  # metrics.csv rows written up to ``step``


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


def train(
    cfg: Any,
    out_dir: Path,
    on_progress: ProgressHook | None = None,
    say: Callable[[str], None] = log.info,
    resume: dict[str, Any] | None = None,
    stop: StopRequests = STOP,
    on_row: RowHook = no_row_hook,
) -> TrainResult:
    """Train one model as ``cfg`` says, writing metrics.csv and checkpoint.pt into ``out_dir`` as it goes.

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
        self.optimizer = make_optimizer(
            self.model, cfg.train.lr, device, tuple(cfg.train.adam_betas), cfg.train.adam_eps
        )
        self.watch = DivergenceWatch(device)
        self.shuffler = torch.Generator().manual_seed(cfg.seed)
        self.binarizer = batch_binarizer(cfg.data.binarize, cfg.seed, device)  # data.binarize=dynamic only
        self.batches = Batches(self.images, cfg.train.batch_size, cfg.train.shuffle, self.shuffler, self.binarizer)
        self.steps = total_steps(cfg, len(self.images))
        self.new_lr = lr_changes(cfg.train, self.batches.per_epoch, self.steps)  # {step: lr} where a stage starts
        self.likelihood = str(cfg.model.likelihood)
        self.logged, self.evaluated = set(log_steps(self.steps)), eval_steps(self.steps, cfg.train.eval_every)
        self.position = Position()
        if resume is not None:
            self.restore(resume)
        keep = self.position.rows if resume else None
        self.metrics = MetricsWriter(
            out_dir / METRICS_CSV, keep=keep, test_held_out=test_held_out(cfg), nats_are=run_nats_label(cfg)
        )
        self.saved_step = self.position.step if resume else None
        self.clock = self.last_save = 0.0  # perf_counter() at step 0 of the run / at the last save

    def restore(self, payload: dict[str, Any]) -> None:
        """Weights, optimizer (its staged lr included), RNG, shuffle and binarizer states and the position."""
        state, rng = payload["training"], payload["rng"]
        if state["images"] != len(self.images):
            raise RunError(f"the checkpoint trained on {state['images']} images, the data gives {len(self.images)}")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(rng["torch"])
        self.shuffler.set_state(rng["shuffle"])
        if self.binarizer is not None:
            self.binarizer.set_state(rng["binarize"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if state["order"] is not None:
            self.batches.order = state["order"].to(torch.int64).to(self.device)
        self.position = Position(**state["position"])

    def run(self, on_progress: ProgressHook | None, stop: StopRequests) -> TrainResult:
        model, optimizer, batches, position = self.model, self.optimizer, self.batches, self.position
        beta, start = float(self.cfg.beta), position.step
        fail_at_step = self.cfg.get("fail_at_step")  # testing aid (`+fail_at_step=N`): exercises failure paths
        progress_every = max(1, min(16, self.steps // 100))
        where = f"{len(self.images)} {self.cfg.data.name} images ({self.device}, {torch.get_num_threads()} threads)"
        self.say(
            f"continuing at step {start + 1} of {self.steps} on {where}"
            if start
            else f"training {self.steps} steps on {where}"
        )
        record = provenance.collect(self.cfg, self.device, torch.get_num_threads(), self.data_files)
        provenance.write(self.out_dir, record, start)
        self.last_save = time.perf_counter()
        self.clock = self.last_save - position.seconds
        try:
            for step in range(start + 1, self.steps + 1):
                if step in self.new_lr:
                    set_lr(optimizer, self.new_lr[step])
                x = batches.batch(step)
                q, _, p = model(x)
                optimizer.zero_grad(set_to_none=True)
                kl_term = backward_beta_elbo(q, p.logits, x, beta, self.likelihood)
                optimizer.step()
                self.watch.observe(step, p.logits, kl_term)

                if step == fail_at_step:
                    raise RuntimeError(f"failing at step {step} as asked by fail_at_step")
                if step in self.logged or step in self.evaluated or step % progress_every == 0:
                    self.record(step, q, p.logits, x, on_progress)
                position.step = step
                now = time.perf_counter()
                if stop.requested(now):
                    break
                if self.checkpoint_due(step, now):
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

    def record(self, step: int, q, logits: torch.Tensor, x: torch.Tensor, on_progress: ProgressHook | None) -> None:
        """The scheduled work of a step: its train row, a test evaluation, the progress bar."""
        beta, batch_size, position = float(self.cfg.beta), self.batches.batch_size, self.position
        with torch.no_grad():
            terms = elbo_terms(q, logits, x, beta, self.likelihood)
        loss = float(terms.loss)
        self.watch.check(step, loss)
        now = time.perf_counter()
        epoch = self.batches.epoch(step)
        if step in self.logged:
            row = {"step": step, "epoch": round(epoch, 4), "split": "train", **batch_metrics(terms)}
            since = now - (self.clock + position.last_log_seconds)
            row["images_per_s"] = round((step - position.last_log_step) * batch_size / max(since, 1e-9), 1)
            row["seconds"] = round(now - self.clock, 4)
            self.metrics.write(row)
            self.on_row(row, self.model)
            log.info(f"step {step}: loss {row['loss']:.5f}, neg_elbo_nats {row['neg_elbo_nats']:.2f}")
            position.last_log_step, position.last_log_seconds = step, now - self.clock
        if step in self.evaluated:
            eval_started = time.perf_counter()
            row = test_row(self.model, self.test_images, beta, self.cfg.seed, step, epoch, self.clock)
            self.metrics.write(row)
            self.on_row(row, self.model)  # inside the evaluation's time, which images_per_s leaves out
            spent = time.perf_counter() - eval_started
            position.eval_seconds += spent
            position.last_log_seconds += spent  # images_per_s counts training time only
        if on_progress is not None:
            on_progress(step, self.steps, loss, step * batch_size / max(now - self.clock, 1e-9))

    def checkpoint_due(self, step: int, now: float) -> bool:
        every = self.cfg.train.checkpoint_every
        if every is None:
            return now - self.last_save >= AUTO_CHECKPOINT_SECONDS
        return every > 0 and step % every == 0

    def save(self) -> None:
        """checkpoint.pt for the current step, after the metrics rows it counts are on disk."""
        position = self.position
        self.watch.check(position.step, 0.0)  # never a checkpoint of weights the watch saw break
        position.seconds, position.rows = time.perf_counter() - self.clock, len(self.metrics.rows)
        self.metrics.sync()
        checkpoint.save(
            self.out_dir / CHECKPOINT,
            config=self.config,
            model=self.model,
            optimizer=self.optimizer,
            step=position.step,
            rng=self.rng_state(),
            final=self.final(),
            training={
                "position": asdict(position),
                "total_steps": self.steps,
                "epoch": self.batches.epoch(position.step),
                "images": len(self.images),
                "order": None if self.batches.order is None else self.batches.order.to(torch.int32),
            },
        )
        self.saved_step, self.last_save = position.step, time.perf_counter()

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
    train_split = load_split(cfg.data.name, cfg.data.root, train=True, limit=cfg.data.limit, say=say)
    test_split = load_split(cfg.data.name, cfg.data.root, train=False, limit=cfg.data.test_limit, say=say)
    files = train_split.files + test_split.files
    images = training_set(train_split, test_split, cfg.data.train_on, cfg.data.binarize).images
    return images, binarized(test_split, cfg.data.binarize, train=False), files  # grey, or the fixed binary test set


def test_row(
    model: VAE, images: torch.Tensor, beta: float, seed: int, step: int, epoch: float, started: float
) -> dict[str, Any]:
    """A metrics row for the whole test split, in eval mode; NaN or inf is divergence, never a row."""
    model.eval()
    row = {"step": step, "epoch": round(epoch, 4), "split": "test", **evaluate(model, images, beta, seed)}
    model.train()
    broken = next((key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)), None)
    if broken is not None:
        raise TrainingDiverged(diverged(step, f"the test evaluation after it gave {broken}={row[broken]}"))
    return {**row, "images_per_s": "", "seconds": round(time.perf_counter() - started, 4)}
