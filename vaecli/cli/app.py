"""The ``vae`` command: every Typer command, and the one place errors become exit codes.

Heavy imports (torch, Hydra, plotnine) happen inside the commands so ``vae --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from vaecli import __version__
from vaecli.cli.options import (
    CfgOption,
    CheckpointOption,
    CodesOutOption,
    CountOption,
    DataRootOption,
    DeviceOption,
    DisentanglementOption,
    FastDciOption,
    FirstNOption,
    LatentsPerPassOption,
    OutOption,
    Overrides,
    PlotOutOption,
    ResolveOption,
    ScaleOption,
    SeedOption,
    SplitOption,
    StepsOption,
    examples,
    parse_ints,
    parse_range,
)
from vaecli.errors import VaeError, first_line


class VaeCommands(TyperGroup):
    """Maps every :class:`VaeError` to one ``error:`` line and its exit code (2 usage, 1 run).

    A run stopped by a signal prints one ``stopped:`` line instead, with exit code 130 or 143.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaeError as error:
            colour = "yellow" if error.label == "stopped" else "red"
            typer.secho(f"{error.label}: {first_line(error)}", fg=colour, err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    name="vae",
    cls=VaeCommands,
    help="Train, inspect and sweep beta-VAEs on MNIST, dSprites or your own images. "
    "Configuration is Hydra: pass key=value overrides.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vaecli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, inspect and sweep beta-VAEs on MNIST, dSprites or your own images."""


# ----------------------------------------------------------------------------- runs


@app.command(
    "train",
    epilog=examples(
        "vae train (the seed experiment: beta=0.01, latent_size=10, 1024 steps)",
        "vae train beta=0 latent_size=2 train.steps=5000",
        "vae train data=fashion_mnist model.hidden_sizes=[256,256] device=cuda",
        "vae train train.epochs=5 train.shuffle=false data.train_on=all",
        "vae train hydra.run.dir=runs/first (choose the run folder)",
        "vae train --resume runs/first (continue a stopped run from its checkpoint)",
        "vae train --resume runs/first train.steps=5000 (extend a finished run)",
        "vae train logger=tensorboard (also TensorBoard events in <run folder>/tb)",
        "vae train --cfg job (print the composed config)",
    )
    + "\n\nCtrl-C (SIGINT) or SIGTERM ends the current step, saves a checkpoint and the figures, and exits "
    "130 or 143 with the command that continues the run; a second Ctrl-C quits at once.",
)
def train_command(
    overrides: Overrides = None,
    cfg: CfgOption = None,
    resolve: ResolveOption = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue this run (its folder or checkpoint.pt) from its last checkpoint, in its own folder; "
            "overrides may change only train.steps/train.epochs and where it runs.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train one beta-VAE and write a run folder (config, metrics.csv, plots, checkpoint)."""
    from vaecli.run.command import train_run

    train_run(overrides or [], cfg, resolve, resume)


@app.command(
    epilog=examples(
        "vae sweep (the default study: beta=0,0.01,0.1,1 x latent_size=2,5,10,20)",
        "vae sweep beta=0,0.01,0.1,1 latent_size=2,10 hydra/launcher=joblib (members in parallel)",
        "vae sweep train.steps=200 (the default grid with a fixed key)",
        "vae sweep 'latent_size=range(2,12,2)' beta=0.01",
        "vae sweep beta=0,1 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu",
        "vae sweep beta=0,1 hydra.sweep.dir=sweeps/first (run it again to resume)",
        "vae sweep hydra/sweeper=optuna 'beta=tag(log, interval(0.001, 1))' 'latent_size=range(2,21)' "
        "hydra.sweeper.n_trials=20 (an Optuna search: each trial a member)",
        "vae sweep search=best_beta (a preset search: which beta minimises the test -ELBO?)",
        "vae sweep --report outputs/sweeps/2026-11-25/10-31-07 (re-aggregate a sweep folder)",
    )
)
def sweep(
    overrides: Overrides = None,
    report: Annotated[
        str | None, typer.Option("--report", help="Only aggregate this existing sweep folder.", show_default=False)
    ] = None,
    grid: Annotated[
        str, typer.Option(help="Grid from conf/vae_sweep/grids/ used for keys the command line leaves unswept.")
    ] = "default",
) -> None:
    """Run a grid of trainings (or an Optuna search) through Hydra's multirun and compare them (sweep.csv and plots)."""
    from vaecli.sweep import command as sweeps

    raise typer.Exit(sweeps.sweep(overrides or [], report, grid))


@app.command(epilog=examples("vae data (MNIST into the default data root)", "vae data fashion_mnist --root /data"))
def data(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Datasets: mnist, fashion_mnist (any registered name).", show_default=False),
    ] = None,
    root: Annotated[str | None, typer.Option(help="Data root (default: $VAECLI_DATA or ~/.cache/vaecli).")] = None,
) -> None:
    """Find, fetch and verify datasets now, so later runs (or cluster jobs) need no network."""
    from vaecli.config.schema import default_root
    from vaecli.data.registry import DATASETS
    from vaecli.data.sources import ensure_data
    from vaecli.errors import UsageError

    names = names or ["mnist"]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose from: {', '.join(DATASETS)}")
    local = [name for name in names if getattr(DATASETS[name], "needs_options", False)]
    if local:
        raise UsageError(f"data={local[0]} is read from data.path=DIR when a run starts: there is nothing to fetch")
    folder = Path(root).expanduser() if root else default_root()
    for name in names:
        ensure_data(name, folder)
        typer.echo(f"{name}: {DATASETS[name].where(folder)}")


# ----------------------------------------------------------------------------- pictures


def options(checkpoint: str, out: str | None, seed: int, device: str, data_root: str | None):
    from vaecli.inspect.commands import Options

    return Options(checkpoint=checkpoint, out=out, seed=seed, device=device, data_root=data_root)


def wrote(path: Path) -> None:
    typer.echo(f"wrote {path}")


@app.command(
    epilog=examples(
        "vae reconstruct -c outputs/2026-11-25/10-31-07 (first 8 test images and their reconstructions)",
        "vae reconstruct -c runs/first/checkpoint.pt --indices 3,17,42 --split train",
        "vae reconstruct -c runs/first --n 12 --sample --seed 1 (decode a draw from q, not its mean)",
    )
)
def reconstruct(
    checkpoint: CheckpointOption,
    split: SplitOption = "test",
    n: CountOption = None,
    indices: Annotated[
        str | None, typer.Option(help="Images by index instead, like 3,17,42.", show_default=False)
    ] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Decode a draw from q instead of its mean.")] = False,
    scale: ScaleOption = 1,
    out: OutOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    data_root: DataRootOption = None,
) -> None:
    """Originals in one row, their reconstructions (decoder means) in the row below."""
    from vaecli.inspect import commands as inspection

    chosen = parse_ints(indices, "--indices", example="3,17,42") if indices is not None else ()
    wrote(inspection.reconstruct(options(checkpoint, out, seed, device, data_root), split, n, chosen, sample, scale))


@app.command(
    epilog=examples(
        "vae traverse -c runs/first (the seed's figure: dims 0 and 1 over [-1, 1], 10 x 10)",
        "vae traverse -c runs/first --dims 2,5 --range=-3,3 --steps 8 --around 7",
        "vae traverse -c runs/first --mode rows (one row per dim, the most used dims first)",
        "vae traverse -c runs/latent2 --mode map --steps 20 (latent_size=2 models)",
        "vae traverse -c runs/first --mode rows --gif --range=-3,3 --steps 20 (an animated GIF: a frame per step)",
    )
    + "\n\nAxis values are written above the columns and beside the rows; the picture is upscaled "
    "by --scale (default 2) so they stay readable.",
)
def traverse(
    checkpoint: CheckpointOption,
    mode: Annotated[
        str,
        typer.Option(
            help="grid: two dims against each other; rows: each dim alone, rows ordered by mean test KL; "
            "map: latent_size=2 over prior quantiles."
        ),
    ] = "grid",
    dims: Annotated[
        str | None,
        typer.Option(
            help="Dims to sweep: two for grid [default: 0,1]; any for rows [default: all].", show_default=False
        ),
    ] = None,
    span: Annotated[
        str | None,
        typer.Option("--range", help="Low,high values of the swept dims [default: -1,1].", show_default=False),
    ] = None,
    steps: StepsOption = 10,
    around: Annotated[
        int | None,
        typer.Option(help="Keep the other dims at this image's posterior mean instead of 0.", show_default=False),
    ] = None,
    split: Annotated[str, typer.Option(help="Split that --around indexes: test or train.")] = "test",
    scale: ScaleOption = 2,
    gif: Annotated[
        bool, typer.Option("--gif", help="With --mode rows: an animated GIF, every dim a row, a frame per step.")
    ] = False,
    out: OutOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    data_root: DataRootOption = None,
) -> None:
    """Decoder means while latent dims sweep a range: what each dim of z does to the picture."""
    from vaecli.inspect import commands as inspection

    chosen = parse_ints(dims, "--dims") if dims is not None else None
    low_high = parse_range(span) if span is not None else None
    common = options(checkpoint, out, seed, device, data_root)
    wrote(inspection.traverse(common, mode, chosen, low_high, steps, around, split, scale, gif))


@app.command(
    epilog=examples(
        "vae sample -c runs/first (8 x 8 draws from the prior)",
        "vae sample -c runs/first --n 16 --seed 3 --scale 2 -o samples.png",
    )
)
def sample(
    checkpoint: CheckpointOption,
    n: Annotated[int, typer.Option("--n", "-n", help="Draw an N x N grid.")] = 8,
    scale: ScaleOption = 1,
    out: OutOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
) -> None:
    """Decoder means for latents drawn from the prior N(0, I)."""
    from vaecli.inspect import commands as inspection

    wrote(inspection.sample(options(checkpoint, out, seed, device, None), n, scale))


@app.command(
    epilog=examples(
        "vae interpolate -c runs/first (test images 0 and 1, a 7 and a 2)",
        "vae interpolate -c runs/first --between 3,42 --steps 16 --scale 2",
    )
    + "\n\nThe row starts and ends with the two original images; the decoded line is between them.",
)
def interpolate(
    checkpoint: CheckpointOption,
    between: Annotated[str, typer.Option(help="Two image indices, like 0,1.")] = "0,1",
    steps: Annotated[int, typer.Option(help="Decoded points on the line, ends included.")] = 10,
    split: SplitOption = "test",
    scale: ScaleOption = 1,
    out: OutOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    data_root: DataRootOption = None,
) -> None:
    """Decoder means along the straight line between the posterior means of two images."""
    from vaecli.inspect import commands as inspection

    pair = parse_ints(between, "--between", count=2)
    wrote(inspection.interpolate(options(checkpoint, out, seed, device, data_root), pair, steps, split, scale))


@app.command(
    epilog=examples(
        "vae embed -c runs/latent2 (latent_size=2: 5000 test images)",
        "vae embed -c runs/first --dims 0,3 --n 10000 -o embed.pdf",
    )
)
def embed(
    checkpoint: CheckpointOption,
    n: Annotated[int, typer.Option("--n", "-n", help="Plot the first N images of the split.")] = 5000,
    dims: Annotated[
        str | None, typer.Option(help="Two dims to plot (needed when latent_size is not 2).", show_default=False)
    ] = None,
    split: SplitOption = "test",
    out: PlotOutOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    data_root: DataRootOption = None,
) -> None:
    """Scatter of posterior means, coloured by digit: how the latent space is laid out."""
    from vaecli.inspect import commands as inspection

    chosen = parse_ints(dims, "--dims", count=2) if dims is not None else None
    wrote(inspection.embed(options(checkpoint, out, seed, device, data_root), n, chosen, split))


# ----------------------------------------------------------------------------- measures


@app.command(
    epilog=examples(
        "vae encode -c runs/first (the 10,000 test images: runs/first/codes-test.npz)",
        "vae encode -c runs/first --split train --n 5000 -o train_codes.npz",
    )
    + "\n\nIn Python: `c = np.load('codes-test.npz')`; `pd.DataFrame(c['loc']).assign(label=c['label'])`.",
)
def encode(
    checkpoint: CheckpointOption,
    split: SplitOption = "test",
    n: FirstNOption = None,
    out: CodesOutOption = None,
    device: DeviceOption = "auto",
    data_root: DataRootOption = None,
) -> None:
    """Posterior means and scales of a split, with labels, as one NPZ file numpy and pandas read."""
    from vaecli.measure.codes import encode_checkpoint

    wrote(encode_checkpoint(checkpoint, split, n, out, device, data_root))


@app.command(
    epilog=examples(
        "vae evaluate -c outputs/2026-11-25/10-31-07 (k=1000 over the 10,000 test images)",
        "vae evaluate -c runs/burda --k 5000 (Burda et al.'s bound)",
        "vae evaluate -c runs/first --k 100 --n 2000 (quicker: the first 2,000 test images)",
        "vae evaluate -c runs/first/checkpoint.pt --split train --n 10000 --seed 1",
    )
    + "\n\nImages are those the run was evaluated on: grey levels, or for data.binarize=static|dynamic one fixed "
    "binary draw, the same for every run. Writes evaluation.json and evaluation_dims.csv into the run folder.",
)
def evaluate(
    checkpoint: CheckpointOption,
    k: Annotated[int, typer.Option("--k", help="Importance samples per image (5000 reproduces Burda et al.).")] = 1000,
    split: SplitOption = "test",
    n: FirstNOption = None,
    batch: LatentsPerPassOption = None,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the draws from q.")] = 0,
    data_root: DataRootOption = None,
    disentanglement: DisentanglementOption = False,
    fast_dci: FastDciOption = False,
) -> None:
    """Importance-weighted bound on log p(x), ELBO and latent usage (KL per dim, active units, I(x; z))."""
    from vaecli.measure import evaluation

    request = evaluation.Request(checkpoint, k, split, n, batch, device, seed, data_root, disentanglement, fast_dci)
    for path in evaluation.evaluate_checkpoint(request):
        wrote(path)


def main() -> None:
    """`python -m vaecli` (vaecli/__main__.py) and the tests' fresh processes start here."""
    app(prog_name="vae")
