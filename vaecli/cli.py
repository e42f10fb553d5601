"""The ``vae`` command: argument parsing and friendly errors, nothing else.

Heavy imports (torch, Hydra, plotnine) happen inside the commands so ``vae --help`` is instant.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vaecli import __version__

app = typer.Typer(
    name="vae",
    help="Train, inspect and sweep beta-VAEs on MNIST. Configuration is Hydra: pass key=value overrides.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2
RUN_ERROR = 1

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. `beta=0.01 latent_size=2 train.steps=5000`.", show_default=False),
]
CfgOption = Annotated[
    str | None,
    typer.Option(
        "--cfg",
        help="Print the config instead of running: `job`, `hydra` or `all`.",
        show_default=False,
    ),
]
ResolveOption = Annotated[bool, typer.Option("--resolve", help="With --cfg: resolve interpolations before printing.")]


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vaecli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Train, inspect and sweep beta-VAEs on MNIST."""


@app.command(
    epilog=(
        "Examples:\n\n"
        "* `vae train` (the seed experiment: beta=0.01, latent_size=10, 1024 steps)\n\n"
        "* `vae train beta=0 latent_size=2 train.steps=5000`\n\n"
        "* `vae train data=fashion_mnist model.hidden_sizes=[256,256] device=cuda`\n\n"
        "* `vae train train.epochs=5 train.shuffle=false data.train_on=all`\n\n"
        "* `vae train hydra.run.dir=runs/first` (choose the run folder)\n\n"
        "* `vae train --cfg job` (print the composed config)"
    )
)
def train(overrides: Overrides = None, cfg: CfgOption = None, resolve: ResolveOption = False) -> None:
    """Train one beta-VAE and write a run folder (config, metrics.csv, plots, checkpoint)."""
    from vaecli import commands

    overrides = overrides or []
    try:
        commands.train(overrides, cfg, resolve)
    except commands.UsageError as error:
        raise fail(str(error)) from None
    except commands.RunError as error:
        raise fail(str(error), RUN_ERROR) from None


@app.command(
    epilog=(
        "Examples:\n\n"
        "* `vae sweep` (the default study: beta=0,0.01,0.1,1 x latent_size=2,5,10,20)\n\n"
        "* `vae sweep beta=0,0.01,0.1,1 latent_size=2,10 hydra/launcher=joblib` (members in parallel)\n\n"
        "* `vae sweep train.steps=200` (the default grid with a fixed key)\n\n"
        "* `vae sweep 'latent_size=range(2,12,2)' beta=0.01`\n\n"
        "* `vae sweep beta=0,1 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu`\n\n"
        "* `vae sweep beta=0,1 hydra.sweep.dir=sweeps/first` (run it again to resume)\n\n"
        "* `vae sweep --report outputs/sweeps/2026-11-25/10-31-07` (re-aggregate a sweep folder)"
    )
)
def sweep(
    overrides: Overrides = None,
    report: Annotated[
        str | None, typer.Option("--report", help="Only aggregate this existing sweep folder.", show_default=False)
    ] = None,
    grid: Annotated[str, typer.Option(help="Grid from conf/sweep/ used for keys the command line leaves unswept.")] = (
        "default"
    ),
) -> None:
    """Run a grid of trainings through Hydra's multirun and compare them (sweep.csv and plots)."""
    from vaecli import commands

    try:
        code = commands.sweep(overrides or [], report, grid)
    except commands.UsageError as error:
        raise fail(str(error)) from None
    raise typer.Exit(code)


@app.command(
    epilog="Examples:\n\n* `vae data` (MNIST into the default data root)\n\n* `vae data fashion_mnist --root /data`"
)
def data(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Datasets: mnist, fashion_mnist.", show_default=False),
    ] = None,
    root: Annotated[str | None, typer.Option(help="Data root (default: $VAECLI_DATA or ~/.cache/vaecli).")] = None,
) -> None:
    """Find, fetch and verify datasets now, so later runs (or cluster jobs) need no network."""
    from vaecli import commands

    try:
        commands.fetch_data(names or ["mnist"], root)
    except commands.UsageError as error:
        raise fail(str(error)) from None
    except commands.RunError as error:
        raise fail(str(error), RUN_ERROR) from None


def _register_more_commands() -> None:
    from vaecli import cli_inspect

    cli_inspect.register(app, fail)


_register_more_commands()


def main() -> None:
    app(prog_name="vae")


if __name__ == "__main__":
    sys.exit(main())
