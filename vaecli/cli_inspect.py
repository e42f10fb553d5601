"""Typer commands that look inside a trained model (reconstruct, traverse, sample, ...).

Only option parsing and error mapping live here; the work is in ``vaecli.inspect``, imported
inside each command so ``vae --help`` stays instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

Fail = Callable[..., typer.Exit]

CheckpointOption = Annotated[
    str,
    typer.Option(
        "--checkpoint", "-c", help="A checkpoint.pt written by `vae train`, or its run folder.", show_default=False
    ),
]
OutOption = Annotated[
    str | None,
    typer.Option(
        "--out",
        "-o",
        help="File to write (default: in the run folder, named by command and options).",
        show_default=False,
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed for the random draws (from q or the prior).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
DataRootOption = Annotated[
    str | None,
    typer.Option(
        "--data-root", help="Dataset folder (default: the data.root stored in the checkpoint).", show_default=False
    ),
]
SplitOption = Annotated[str, typer.Option(help="Which images: test or train.")]
StepsOption = Annotated[int, typer.Option(help="Tiles along each swept axis.")]


class OptionError(ValueError):
    """An option value that does not parse; the message names the option."""


def parse_ints(text: str, option: str, count: int | None = None, example: str = "0,1") -> tuple[int, ...]:
    """``"3,17,42"`` -> (3, 17, 42): whole numbers >= 0, ``count`` of them when given."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts) or (count is not None and len(parts) != count):
        wanted = f"{count} comma-separated" if count is not None else "comma-separated"
        raise OptionError(f"{option} takes {wanted} whole numbers >= 0, like {example}; got {text!r}")
    return tuple(int(part) for part in parts)


def parse_range(text: str) -> tuple[float, float]:
    """``"-1,1"`` -> (-1.0, 1.0): two different finite numbers."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"--range takes two numbers, like -1,1 (or --range=-2,2); got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        raise OptionError(f"--range takes two different finite numbers, like -1,1; got {text!r}")
    return low, high


def run(fail: Fail, work: Callable[[], Path]) -> None:
    """Do the work and say where the picture went; bad input is one line and exit code 2."""
    from vaecli.checkpoint import CheckpointError
    from vaecli.inspect import InspectError, InspectRunError, first_line

    try:
        path = work()
    except (OptionError, InspectError, CheckpointError) as error:
        raise fail(first_line(str(error))) from None
    except InspectRunError as error:
        raise fail(first_line(str(error)), 1) from None
    typer.echo(f"wrote {path}")


def options(checkpoint: str, out: str | None, seed: int, device: str, data_root: str | None):
    from vaecli.inspect import Options

    return Options(checkpoint=checkpoint, out=out, seed=seed, device=device, data_root=data_root)


def examples(*lines: str) -> str:
    """Markdown for an epilog: each command in backticks, a trailing "(note)" left plain."""

    def item(line: str) -> str:
        command, _, note = line.partition(" (")
        return f"* `{command}`" + (f" ({note}" if note else "")

    return "Examples:\n\n" + "\n\n".join(item(line) for line in lines)


def register(app: typer.Typer, fail: Fail) -> None:
    """Add the inspection commands to ``app``; ``fail(message, code=2)`` builds the error exit."""

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
        n: Annotated[
            int | None, typer.Option("--n", "-n", help="The first N images [default: 8].", show_default=False)
        ] = None,
        indices: Annotated[
            str | None, typer.Option(help="Images by index instead, like 3,17,42.", show_default=False)
        ] = None,
        sample: Annotated[bool, typer.Option("--sample", help="Decode a draw from q instead of its mean.")] = False,
        scale: Annotated[int, typer.Option(help="Upscale the picture by this whole factor.")] = 1,
        out: OutOption = None,
        seed: SeedOption = 0,
        device: DeviceOption = "auto",
        data_root: DataRootOption = None,
    ) -> None:
        """Originals in one row, their reconstructions (decoder means) in the row below."""
        from vaecli import inspect

        def work() -> Path:
            chosen = parse_ints(indices, "--indices", example="3,17,42") if indices is not None else ()
            return inspect.reconstruct(
                options(checkpoint, out, seed, device, data_root), split, n, chosen, sample, scale
            )

        run(fail, work)

    @app.command(
        epilog=examples(
            "vae traverse -c runs/first (the seed's figure: dims 0 and 1 over [-1, 1], 10 x 10)",
            "vae traverse -c runs/first --dims 2,5 --range=-3,3 --steps 8 --around 7",
            "vae traverse -c runs/first --mode rows (one row per dim, the most used dims first)",
            "vae traverse -c runs/latent2 --mode map --steps 20 (latent_size=2 models)",
        )
        + "\n\nAxis values are written above the columns and beside the rows; the picture is upscaled "
        "by --scale (default 2) so they stay readable.",
    )
    def traverse(
        checkpoint: CheckpointOption,
        mode: Annotated[
            str,
            typer.Option(
                help="grid: two dims against each other; rows: each dim alone, "
                "rows ordered by mean test KL; map: latent_size=2 over prior "
                "quantiles."
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
        scale: Annotated[int, typer.Option(help="Upscale the picture by this whole factor.")] = 2,
        out: OutOption = None,
        seed: SeedOption = 0,
        device: DeviceOption = "auto",
        data_root: DataRootOption = None,
    ) -> None:
        """Decoder means while latent dims sweep a range: what each dim of z does to the picture."""
        from vaecli import inspect

        def work() -> Path:
            chosen = parse_ints(dims, "--dims") if dims is not None else None
            low_high = parse_range(span) if span is not None else None
            return inspect.traverse(
                options(checkpoint, out, seed, device, data_root), mode, chosen, low_high, steps, around, split, scale
            )

        run(fail, work)

    @app.command(
        epilog=examples(
            "vae sample -c runs/first (8 x 8 draws from the prior)",
            "vae sample -c runs/first --n 16 --seed 3 --scale 2 -o samples.png",
        )
    )
    def sample(
        checkpoint: CheckpointOption,
        n: Annotated[int, typer.Option("--n", "-n", help="Draw an N x N grid.")] = 8,
        scale: Annotated[int, typer.Option(help="Upscale the picture by this whole factor.")] = 1,
        out: OutOption = None,
        seed: SeedOption = 0,
        device: DeviceOption = "auto",
    ) -> None:
        """Decoder means for latents drawn from the prior N(0, I)."""
        from vaecli import inspect

        run(fail, lambda: inspect.sample(options(checkpoint, out, seed, device, None), n, scale))

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
        scale: Annotated[int, typer.Option(help="Upscale the picture by this whole factor.")] = 1,
        out: OutOption = None,
        seed: SeedOption = 0,
        device: DeviceOption = "auto",
        data_root: DataRootOption = None,
    ) -> None:
        """Decoder means along the straight line between the posterior means of two images."""
        from vaecli import inspect

        def work() -> Path:
            pair = parse_ints(between, "--between", count=2)
            return inspect.interpolate(options(checkpoint, out, seed, device, data_root), pair, steps, split, scale)

        run(fail, work)

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
        out: Annotated[
            str | None,
            typer.Option(
                "--out",
                "-o",
                help="File to write: .png, .pdf or .svg (default: in the run folder).",
                show_default=False,
            ),
        ] = None,
        seed: SeedOption = 0,
        device: DeviceOption = "auto",
        data_root: DataRootOption = None,
    ) -> None:
        """Scatter of posterior means, coloured by digit: how the latent space is laid out."""
        from vaecli import inspect

        def work() -> Path:
            chosen = parse_ints(dims, "--dims", count=2) if dims is not None else None
            return inspect.embed(options(checkpoint, out, seed, device, data_root), n, chosen, split)

        run(fail, work)
