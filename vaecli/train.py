"""The training loop: Adam on the beta-ELBO, metrics rows at powers of two, test evaluations.

Kept lean on purpose: the hot loop does one slice, one forward, one backward and one fused
Adam step; everything else (logging, evaluation, progress) happens only at scheduled steps.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaecli.data import Batches, Split, batch_binarizer, binarized, load_split, training_set
from vaecli.errors import RunError
from vaecli.likelihoods import nats_label
from vaecli.model import VAE, build_model
from vaecli.objective import backward_beta_elbo, batch_metrics, elbo_terms, evaluate
from vaecli.run_folder import METRICS_CSV
from vaecli.runtime import pick_device
from vaecli.schedules import lr_changes, set_lr

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "step",
    "epoch",
    "split",
    "loss",
    "reconstruction",
    "kl",
    "recon_nats",
    "kl_nats",
    "neg_elbo_nats",
    "images_per_s",
    "seconds",
    "nats_are",  # log-likelihood, or cross-entropy (a Bernoulli decoder on grey levels): likelihoods.nats_label
]
TIMING_COLUMNS = ("images_per_s", "seconds")


class TrainingDiverged(RunError):
    """The loss became NaN or infinite; the message says at which step."""


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


def make_optimizer(model: VAE, train: Any, device: torch.device) -> torch.optim.Adam:
    """Fused Adam where the device supports it: one kernel instead of a dozen per tensor."""
    settings = {"lr": train.lr, "betas": tuple(train.adam_betas), "eps": train.adam_eps}
    try:
        return torch.optim.Adam(model.parameters(), **settings, fused=device.type in ("cpu", "cuda", "mps"))
    except RuntimeError:
        return torch.optim.Adam(model.parameters(), **settings)


@dataclass
class TrainResult:
    model: VAE
    optimizer: torch.optim.Optimizer
    steps: int
    rows: list[dict[str, Any]]
    test: Split
    seconds: float
    eval_seconds: float
    shuffle_state: torch.Tensor
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    binarize_state: dict[str, torch.Tensor] = field(default_factory=dict)  # {"binarize": state} when dynamic


class MetricsWriter:
    """Appends rows to metrics.csv as they come, so a failed run still shows its curve."""

    def __init__(self, path: Path, nats_are: str):
        self.handle = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=METRIC_COLUMNS)
        self.nats_are = nats_are
        self.writer.writeheader()
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        row = {**row, "nats_are": self.nats_are}
        self.rows.append(row)
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


ProgressHook = Callable[[int, int, float, float], None]


def train(
    cfg: Any,
    out_dir: Path,
    on_progress: ProgressHook | None = None,
    say: Callable[[str], None] = log.info,
) -> TrainResult:
    """Train one model as ``cfg`` says, writing metrics.csv into ``out_dir`` as it goes."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_images, test_split = load_data(cfg, say)
    train_images, test_images = train_images.to(device), test_split.images.to(device)

    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg.train, device)
    shuffler = torch.Generator().manual_seed(cfg.seed)
    binarizer = batch_binarizer(cfg.data.binarize, cfg.seed, device)  # its state: binarizer.get_state()
    batches = Batches(train_images, cfg.train.batch_size, cfg.train.shuffle, shuffler, binarizer)
    steps = total_steps(cfg, len(train_images))
    new_lr = lr_changes(cfg.train, batches.per_epoch, steps)  # {step: lr} where the schedule changes it
    logged, evaluated = set(log_steps(steps)), eval_steps(steps, cfg.train.eval_every)
    progress_every = max(1, min(16, steps // 100))
    beta, batch_size, likelihood = float(cfg.beta), batches.batch_size, str(cfg.model.likelihood)
    fail_at_step = cfg.get("fail_at_step")  # testing aid (`+fail_at_step=N`): exercises failure paths
    threads = torch.get_num_threads()
    say(f"training {steps} steps on {len(train_images)} {cfg.data.name} images ({device}, {threads} threads)")

    metrics = MetricsWriter(out_dir / METRICS_CSV, nats_label(likelihood, cfg.data.binarize != "none"))
    started = time.perf_counter()
    last_time, last_step, eval_seconds = started, 0, 0.0
    try:
        for step in range(1, steps + 1):
            if step in new_lr:
                set_lr(optimizer, new_lr[step])
            x = batches.batch(step)
            q, _, p = model(x)
            optimizer.zero_grad(set_to_none=True)
            backward_beta_elbo(q, p.logits, x, beta, likelihood)
            optimizer.step()

            if step == fail_at_step:
                raise RuntimeError(f"failing at step {step} as asked by fail_at_step")
            if step in logged or step in evaluated or step % progress_every == 0:
                with torch.no_grad():
                    terms = elbo_terms(q, p.logits, x, beta, likelihood)
                loss = float(terms.loss)
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss} at step {step}; try a smaller train.lr")
                now = time.perf_counter()
                if step in logged:
                    row = {
                        "step": step,
                        "epoch": round(batches.epoch(step), 4),
                        "split": "train",
                        **batch_metrics(terms),
                    }
                    row["images_per_s"] = round((step - last_step) * batch_size / max(now - last_time, 1e-9), 1)
                    row["seconds"] = round(now - started, 4)
                    metrics.write(row)
                    log.info(f"step {step}: loss {row['loss']:.5f}, neg_elbo_nats {row['neg_elbo_nats']:.2f}")
                    last_time, last_step = now, step
                if step in evaluated:
                    eval_started = time.perf_counter()
                    metrics.write(test_row(model, test_images, beta, cfg.seed, step, batches.epoch(step), started))
                    spent = time.perf_counter() - eval_started
                    eval_seconds += spent
                    last_time += spent  # images_per_s counts training time only
                if on_progress is not None:
                    on_progress(step, steps, loss, step * batch_size / max(now - started, 1e-9))
    finally:
        metrics.close()
    seconds = time.perf_counter() - started
    final = {split: next(r for r in reversed(metrics.rows) if r["split"] == split) for split in ("train", "test")}
    result = TrainResult(
        model, optimizer, steps, metrics.rows, test_split, seconds, eval_seconds, shuffler.get_state(), final
    )
    result.binarize_state = {"binarize": binarizer.get_state()} if binarizer is not None else {}
    return result


def load_data(cfg: Any, say: Callable[[str], None]) -> tuple[torch.Tensor, Split]:
    """The images to train on (the test set included when ``data.train_on=all``) and the test split."""
    train_split = load_split(cfg.data.name, cfg.data.root, train=True, limit=cfg.data.limit, say=say)
    test_split = load_split(cfg.data.name, cfg.data.root, train=False, limit=cfg.data.test_limit, say=say)
    images = training_set(train_split, test_split, cfg.data.train_on, cfg.data.binarize).images
    return images, binarized(test_split, cfg.data.binarize, train=False)  # grey, or the one fixed binary test set


def test_row(
    model: VAE, images: torch.Tensor, beta: float, seed: int, step: int, epoch: float, started: float
) -> dict[str, Any]:
    """A metrics row for the whole test split, in eval mode."""
    model.eval()
    row = {"step": step, "epoch": round(epoch, 4), "split": "test", **evaluate(model, images, beta, seed)}
    model.train()
    return {**row, "images_per_s": "", "seconds": round(time.perf_counter() - started, 4)}
