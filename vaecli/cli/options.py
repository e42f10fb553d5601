"""Option types shared by the ``vae`` commands, and parsing of option text (``3,17,42``, ``-1,1``).

Declarative on purpose: each option's flags, help and default are written once here and
reused by every command that takes it.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from vaecli.config.checks import SPLITS, check_count, check_split  # noqa: F401  (re-exported for the commands)
from vaecli.errors import UsageError

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. `beta=0.01 latent_size=2 train.steps=5000`.", show_default=False),
]
CfgOption = Annotated[
    str | None,
    typer.Option("--cfg", help="Print the config instead of running: `job`, `hydra` or `all`.", show_default=False),
]
ResolveOption = Annotated[bool, typer.Option("--resolve", help="With --cfg: resolve interpolations before printing.")]
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
PlotOutOption = Annotated[
    str | None,
    typer.Option(
        "--out", "-o", help="File to write: .png, .pdf or .svg (default: in the run folder).", show_default=False
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
ScaleOption = Annotated[int, typer.Option(help="Upscale the picture by this whole factor.")]
CountOption = Annotated[
    int | None, typer.Option("--n", "-n", help="The first N images [default: 8].", show_default=False)
]


def parse_ints(text: str, option: str, count: int | None = None, example: str = "0,1") -> tuple[int, ...]:
    """``"3,17,42"`` -> (3, 17, 42): whole numbers >= 0, ``count`` of them when given."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts) or (count is not None and len(parts) != count):
        wanted = f"{count} comma-separated" if count is not None else "comma-separated"
        raise UsageError(f"{option} takes {wanted} whole numbers >= 0, like {example}; got {text!r}")
    return tuple(int(part) for part in parts)


def parse_range(text: str) -> tuple[float, float]:
    """``"-1,1"`` -> (-1.0, 1.0): two different finite numbers."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--range takes two numbers, like -1,1 (or --range=-2,2); got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        raise UsageError(f"--range takes two different finite numbers, like -1,1; got {text!r}")
    return low, high


def examples(*lines: str) -> str:
    """Markdown for an epilog: each command in backticks, a trailing "(note)" left plain."""

    def item(line: str) -> str:
        command, _, note = line.partition(" (")
        return f"* `{command}`" + (f" ({note}" if note else "")

    return "Examples:\n\n" + "\n\n".join(item(line) for line in lines)


FirstNOption = Annotated[
    int | None, typer.Option("--n", "-n", help="The first N images [default: all].", show_default=False)
]
CodesOutOption = Annotated[
    str | None,
    typer.Option("--out", "-o", help="An .npz file [default: the run's codes-SPLIT.npz].", show_default=False),
]
LatentsPerPassOption = Annotated[
    int | None,
    typer.Option(
        "--batch",
        help="Latents decoded per pass (bounds memory whatever --k is) [default: the run's eval.latents_per_pass].",
        show_default=False,
    ),
]
DisentanglementOption = Annotated[
    bool,
    typer.Option(
        "--disentanglement",
        help="Instead of the bound: MIG, Chen's MIG, DCI, SAP, modularity, explicitness, FactorVAE and beta-VAE "
        "scores on the codes of the run's whole factor grid (data=dsprites), into disentanglement.json.",
    ),
]
FastDciOption = Annotated[
    bool,
    typer.Option(
        "--fast-dci",
        help="DCI with 20 boosting stages at rate 0.5, not disentanglement_lib's 100 at 0.1 (named fast DCI).",
    ),
]
