"""What `vae evaluate` (and `eval.iwae_k` at the end of training) measures, writes and prints.

The importance-weighted bound and the k-draw ELBO (bounds.py), the latent diagnostics (latents.py)
and what the numbers mean: split, images, k, likelihood, binarisation, and whether the nats are a
log-likelihood or only a cross-entropy (a Bernoulli decoder on grey-level pixels). A run is
evaluated on the images it was evaluated on while training: the grey levels, or for a binarised
run one fixed binary draw of the split (``data.binarize_split``); an older checkpoint counts as grey.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaecli.config.checks import check_count, check_split
from vaecli.config.schema import test_held_out
from vaecli.data.tensors import binarize_split
from vaecli.errors import RunError, UsageError, first_line
from vaecli.measure.bounds import LATENTS_PER_PASS, PerImageBound, ProgressHook, importance_weighted_bound
from vaecli.measure.disentanglement.evaluate import disentanglement_after_training
from vaecli.measure.disentanglement.report import disentanglement_command
from vaecli.measure.latents import LatentUsage, latent_usage
from vaecli.measure.registry import measure_all
from vaecli.models.likelihoods import is_density, nats_label
from vaecli.models.mlp import VAE
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import lock
from vaecli.runfolder.checkpoint import Loaded, load_model

log = logging.getLogger("vaecli")
BOUND_SEED_OFFSET, LATENT_SEED_OFFSET = 0, 1  # separate noise streams: k does not change the I(x; z) draws
BINARIZED = {
    "none": "8-bit pixel values in [0, 1] (not binarised)",
    "static": "binarised pixels (one fixed draw, data.binarize=static)",
    "dynamic": "binarised pixels (trained on fresh draws; evaluated on one fixed draw, data.binarize=dynamic)",
}


def binary_pixels(images: torch.Tensor) -> bool:
    """True when every pixel is exactly 0 or 1: read from the data, not from the config."""
    return bool(((images == 0) | (images == 1)).all())


@dataclass
class Evaluation:
    bound: PerImageBound
    latents: LatentUsage
    meaning: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # registered metrics (measure.registry)

    def to_json(self) -> dict[str, Any]:
        """The content of evaluation.json: what was measured, the bound, the latent figures, registered metrics."""
        found = {"setup": self.meaning, "bound": self.bound.summary(), "latents": self.latents.summary()}
        return {**found, "metrics": self.metrics} if self.metrics else found

    def dimension_rows(self) -> list[dict[str, Any]]:
        return self.latents.rows()


def evaluate_model(
    model: VAE,
    images: torch.Tensor,
    *,
    k: int,
    split: str = "test",
    binarize: str = "none",
    seed: int = 0,
    latents_per_pass: int = LATENTS_PER_PASS,
    mi_batch: int | None = None,
    on_progress: ProgressHook | None = None,
    held_out: bool = True,
) -> Evaluation:
    """The full evaluation of ``model`` on ``images`` (already binarised as the run's data says).

    ``held_out`` is False when the model trained on these images (the train split, or the test
    split of a ``data.train_on=all`` run): every label of the figures then says so.

    Noise comes from CPU generators seeded from ``seed``, so the same call gives the same figures.
    """
    if k < 1:
        raise UsageError(f"k={k}: the number of importance samples must be at least 1")
    was_training = model.training
    model.eval()
    try:
        bound = importance_weighted_bound(
            model,
            images,
            k,
            generator=torch.Generator().manual_seed(seed + BOUND_SEED_OFFSET),
            latents_per_pass=latents_per_pass,
            on_progress=on_progress,
        )
        latents = latent_usage(
            model, images, generator=torch.Generator().manual_seed(seed + LATENT_SEED_OFFSET), mi_batch=mi_batch
        )
        metrics = measure_all(model, images, seed)
    finally:
        model.train(was_training)
    binary = binary_pixels(images)
    meaning = {
        "split": split,
        "images": len(images),
        "k": k,
        "likelihood": model.likelihood,
        "binarize": binarize,
        "binary_pixels": binary,
        "nats_are": nats_label(model.likelihood, binary),
        "held_out": held_out,
        "seed": seed,
        "latents_per_pass": latents_per_pass,
        "mi_batch": mi_batch,
    }
    bound.discrete = not is_density(model.likelihood)  # a density of continuous pixels: no bits/dim
    return Evaluation(bound=bound, latents=latents, meaning=meaning, metrics=metrics)


# ----------------------------------------------------------------------------- a run's evaluation


@dataclass
class Request:
    """What `vae evaluate` was asked for."""

    checkpoint: str
    k: int
    split: str
    n: int | None
    latents_per_pass: int | None  # None: the run's eval.latents_per_pass
    device: str
    seed: int
    data_root: str | None = None
    disentanglement: bool = False
    fast_dci: bool = False


def run_images(loaded: Loaded, split: str, n: int | None, data_root: str | None) -> torch.Tensor:
    """The first ``n`` images of a split (all when None) as the run is evaluated on them."""
    data = loaded.dataset(split, None, data_root)
    if n is not None and n > len(data):
        raise UsageError(f"--n {n} is beyond the {split} split's {len(data)} images")
    return binarize_split(data.images[:n], str(loaded.config.data.binarize), train=split == "train")


def pick_threads(model: VAE, images: torch.Tensor, latents_per_pass: int) -> int:
    """On the CPU, the thread count at which a slice of the bound runs fastest now (every core is 2-3x
    slower than one thread when another process keeps a core busy); the figures' last digits can
    depend on it, as on any change of thread count."""
    from vaecli.config.runtime import settle_threads

    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return torch.get_num_threads()
    sample = images[:1].to(parameter.device)

    def work() -> None:  # one pass of the bound's size: latents_per_pass draws
        generator = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            importance_weighted_bound(
                model, sample, latents_per_pass, generator=generator, latents_per_pass=latents_per_pass
            )

    return settle_threads(lambda: work, torch.get_num_threads())


def evaluate_checkpoint(request: Request) -> list[Path]:
    """``vae evaluate``: check the options, evaluate with a progress bar, write the files, print the tables."""
    from rich.console import Console

    if request.disentanglement:  # the disentanglement metrics on the run's factor grid, not the bound
        return disentanglement_command(request)
    check_count(request.k, "--k")
    check_split(request.split)
    for value, option in ((request.n, "--n"), (request.latents_per_pass, "--batch")):
        if value is not None:
            check_count(value, option)
    loaded = load_model(request.checkpoint, request.device)
    with lock.Locked(loaded.run_dir):  # its evaluation.json has one writer: not while the run trains there
        images = run_images(loaded, request.split, request.n, request.data_root)  # before the clock starts
        threads = pick_threads(
            loaded.model, images, request.latents_per_pass or int(loaded.config.eval.latents_per_pass)
        )
        started = time.perf_counter()
        with EvaluationProgress(Console(stderr=True), request.k, enabled=True) as progress:
            evaluation = evaluate_run(
                loaded,
                request.k,
                request.split,
                request.n,
                request.seed,
                request.latents_per_pass,
                on_progress=progress.update,
                images=images,
            )
        seconds = round(time.perf_counter() - started, 3)
        report = {**evaluation.to_json(), "checkpoint": str(loaded.file), "seconds": seconds, "threads": threads}
        paths = write(loaded.run_dir, report, evaluation)
    print_evaluation(Console(), evaluation, str(loaded.file))
    return paths


def evaluate_run(
    run: Loaded,
    k: int = 1000,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    latents_per_pass: int | None = None,
    data_root: str | None = None,
    on_progress: ProgressHook | None = None,
    images: torch.Tensor | None = None,
) -> Evaluation:
    """A loaded run (``vaecli.load_run``) evaluated as `vae evaluate` does, nothing written.

    ``evaluate_run(run, k=100).to_json()`` is what evaluation.json would hold. ``images``: the
    split's images already read (:func:`run_images`), else they are read here.
    """
    check_count(k, "--k")
    check_split(split)
    images = run_images(run, split, n, data_root) if images is None else images
    cfg = run.config
    return evaluate_model(
        run.model,
        images,
        k=k,
        split=split,
        binarize=str(cfg.data.binarize),
        seed=seed,
        latents_per_pass=latents_per_pass or int(cfg.eval.latents_per_pass),
        mi_batch=cfg.eval.mi_batch,
        on_progress=on_progress,
        held_out=split == "test" and test_held_out(cfg),
    )


def after_training(cfg: Any, model: VAE, test_images: torch.Tensor, out_dir: Path, interactive: bool) -> dict:
    """``eval.iwae_k``: the same evaluation on the run's test set; {} when it is 0 (off).

    Returns what result.json gains: ``{"evaluation": <evaluation.json's content>}``.
    """
    disentanglement_after_training(cfg, model, out_dir)
    k = int(cfg.eval.iwae_k)
    if k == 0:
        return {}
    from rich.console import Console

    started = time.perf_counter()
    with EvaluationProgress(Console(stderr=True), k, enabled=interactive and cfg.train.progress) as progress:
        evaluation = evaluate_model(
            model,
            test_images,
            k=k,
            binarize=str(cfg.data.binarize),
            seed=int(cfg.seed),
            latents_per_pass=int(cfg.eval.latents_per_pass),
            mi_batch=cfg.eval.mi_batch,
            on_progress=progress.update,
            held_out=test_held_out(cfg),
        )
    report = {**evaluation.to_json(), "seconds": round(time.perf_counter() - started, 3)}
    write(out_dir, report, evaluation)
    bound, usage = report["bound"], report["latents"]
    split = "test" if evaluation.meaning["held_out"] else "test* (not held out: data.train_on=all trained on it)"
    log.info(
        f"{split} bound -log p(x) <= {bound['nll_bound_nats']:.2f} +- {bound['nll_bound_se']:.2f} nats (k={k}, "
        f"{bound['images']} images, {evaluation.meaning['nats_are']}), -ELBO {bound['neg_elbo_nats']:.2f}, "
        f"{usage['active_units']} of {usage['latent_size']} active units"
    )
    if interactive:
        print_evaluation(Console(), evaluation, str(out_dir))
    return {"evaluation": report}


def write(run_dir: Path, report: dict[str, Any], evaluation: Evaluation) -> list[Path]:
    try:
        return run_folder.write_evaluation(run_dir, report, evaluation.dimension_rows())
    except OSError as error:
        raise RunError(f"cannot write the evaluation into {run_dir}: {error.strerror or first_line(error)}") from None


class EvaluationProgress:
    """A rich progress bar over images (the bound is nearly all the time), with ETA; off when not enabled."""

    def __init__(self, console, k: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = None
        if enabled:
            columns = (TextColumn(f"[bold]IWAE_{k}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"))
            self.bar = Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
            self.task_id = self.bar.add_task("evaluate", total=None)

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task_id, completed=done, total=total)

    def __enter__(self) -> EvaluationProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def meaning_line(setup: dict[str, Any]) -> str:
    """What the nats are, in words: the data, the likelihood, and log-likelihood or cross-entropy."""
    data = BINARIZED.get(setup["binarize"], setup["binarize"])
    line = f"{data}; {setup['likelihood'].replace('_', ' ')} decoder; the nats are a {setup['nats_are']}"
    if setup["nats_are"] == "cross-entropy":
        line += " (a Bernoulli on grey levels), not a log-likelihood: not comparable with published figures"
    if setup["nats_are"] == "log-density":
        line += " of pixel values on [0, 1], not a probability of 8-bit images: no bits/dim"
    if not setup.get("held_out", True):
        line += "; not held out: the model trained on these images"
    return line


def summary_rows(evaluation: Evaluation) -> list[tuple[str, str, str, str]]:
    """(figure, nats, standard error, bits per dim) for the table."""
    bound, usage = evaluation.bound.summary(), evaluation.latents.summary()
    collapsed = [str(row["dim"]) for row in evaluation.dimension_rows() if row["collapsed"]]
    latent_size = usage["latent_size"]

    def bits(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    return [
        (
            f"-ELBO (mean over the {bound['k']} draws)",
            f"{bound['neg_elbo_nats']:.2f}",
            f"{bound['neg_elbo_se']:.2f}",
            bits(bound["neg_elbo_bits_per_dim"]),
        ),
        (
            f"-IWAE_{bound['k']}: -log p(x) <= this",
            f"{bound['nll_bound_nats']:.2f}",
            f"{bound['nll_bound_se']:.2f}",
            bits(bound["nll_bound_bits_per_dim"]),
        ),
        ("reconstruction -E_q log p(x|z)", f"{bound['recon_nats']:.2f}", "", ""),
        ("KL(q(z|x) || p(z))", f"{bound['kl_nats']:.2f}", "", ""),
        (
            f"I(x; z) under q, sampled log q(z|x) (at most log {evaluation.latents.mixture_size:,} = "
            f"{usage['mutual_information_max_nats']:.2f})",
            f"{usage['mutual_information_bounded_nats']:.2f}",
            "",
            "",
        ),
        (
            "I(x; z) under q, He et al. 2019 (analytic entropy, no upper limit)",
            f"{usage['mutual_information_nats']:.2f}",
            "",
            "",
        ),
        (
            "active units (Cov_x E[z|x] > 0.01: the decoder can read them)",
            f"{usage['active_units']} of {latent_size}",
            "",
            "",
        ),
        (
            "collapsed onto the prior (KL < 0.01 nats, not active)",
            f"{len(collapsed)} of {latent_size}",
            "",
            ",".join(collapsed[:12]) + (" ..." if len(collapsed) > 12 else ""),
        ),
        *(
            (f"{name}: {key} ({found['unit']})", f"{value:.4g}", "", "")
            for name, found in evaluation.metrics.items()
            for key, value in found["values"].items()
        ),
    ]


def print_evaluation(console, evaluation: Evaluation, source: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    setup = evaluation.meaning
    split = setup["split"] if setup.get("held_out", True) else f"{setup['split']}* (not held out)"
    title = f"{source}: {split} split, {setup['images']:,} images, k={setup['k']}"
    table = Table(title=escape(title), caption=escape(meaning_line(setup)))
    for column in ("figure", "nats", "± s.e.", "bits/dim"):
        table.add_column(column, justify="left" if column == "figure" else "right", no_wrap=column != "figure")
    for row in summary_rows(evaluation):
        table.add_row(*(escape(cell) for cell in row))
    dims = Table(title=f"per latent dimension (means over the {setup['split']} images)")
    for column in ("dim", "KL (nats)", "Var_x E[z|x]", "active", "collapsed"):
        dims.add_column(escape(column), justify="right")
    for row in evaluation.dimension_rows():
        flags = ("yes" if row["active"] else "", "yes" if row["collapsed"] else "")
        dims.add_row(str(row["dim"]), f"{row['kl_nats']:.3f}", f"{row['posterior_mean_variance']:.4f}", *flags)
    console.print(table)
    console.print(dims)
