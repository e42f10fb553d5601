"""What each ``vae`` command does, behind the Typer layer: checks first, then the work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vaecli.launch import UsageError, compose, describe, first_line, run_hydra

CFG_CHOICES = ("job", "hydra", "all")


class RunError(RuntimeError):
    """The input was fine but the run could not finish; the message says why."""


def quote_value(value: str) -> str:
    """A path as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def has_key(overrides: Sequence[str], key: str) -> bool:
    return any(item.lstrip("+~").split("=", 1)[0] == key for item in overrides)


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2`` ... when a run started in the same second took it."""
    candidate, number = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def print_config(overrides: Sequence[str], cfg_flag: str, resolve: bool, multirun: bool = False) -> None:
    if cfg_flag not in CFG_CHOICES:
        raise UsageError(f"--cfg {cfg_flag} is not one of {', '.join(CFG_CHOICES)}")
    compose(overrides)
    run_hydra(
        [
            *(["--multirun"] if multirun else []),
            "--cfg",
            cfg_flag,
            *(["--resolve"] if resolve else []),
            *overrides,
        ]
    )


def check_device(name: str) -> None:
    from vaecli.train import pick_device

    try:
        pick_device(name)
    except RuntimeError as error:
        raise UsageError(str(error)) from None


def train(overrides: Sequence[str], cfg_flag: str | None, resolve: bool) -> Path:
    """Run one training through Hydra and return its run folder."""
    if cfg_flag is not None:
        print_config(overrides, cfg_flag, resolve)
        return Path.cwd()
    composed = compose(overrides, with_hydra=True)
    check_device(composed.device)
    run_dir = Path(composed.hydra.run.dir)
    arguments = list(overrides)
    if not has_key(overrides, "hydra.run.dir"):
        run_dir = fresh_folder(run_dir)
        arguments.append(f"hydra.run.dir={quote_value(str(run_dir))}")
    launch_run(arguments)
    return run_dir


def launch_run(arguments: Sequence[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vaecli.sources import DataUnavailableError
    from vaecli.train import TrainingDiverged

    try:
        run_hydra(arguments)
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(describe(error)) from None
    except (DataUnavailableError, TrainingDiverged) as error:
        raise RunError(first_line(str(error))) from None
    except KeyboardInterrupt:
        raise RunError("interrupted; the run folder keeps what was written so far") from None
    except (RuntimeError, OSError, ValueError) as error:
        raise RunError(f"{type(error).__name__}: {first_line(str(error))}") from None


def fetch_data(names: Sequence[str], root: str | None) -> None:
    from rich.console import Console

    from vaecli.data import default_root
    from vaecli.sources import DATASETS, IDX_FILES, DataUnavailableError, ensure_dataset

    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose from: {', '.join(DATASETS)}")
    console = Console(stderr=True)
    folder = Path(root).expanduser() if root else default_root()
    for name in names:
        try:
            ensure_dataset(DATASETS[name], folder, say=lambda message: console.print(f"[dim]{message}[/dim]"))
        except DataUnavailableError as error:
            raise RunError(str(error)) from None
        print(f"{name}: {len(IDX_FILES)} verified files under {DATASETS[name].raw_dir(folder)}")
