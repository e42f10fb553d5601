"""What each ``vae`` command does, behind the Typer layer: checks first, then the work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vaecli.launch import UsageError, compose, describe, first_line, has_key, quote_value, run_hydra

CFG_CHOICES = ("job", "hydra", "all")


class RunError(RuntimeError):
    """The input was fine but the run could not finish; the message says why."""


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


def prepare_data(configs) -> None:
    """Find or fetch each dataset before Hydra makes folders: a missing dataset leaves none behind."""
    for name, root in sorted({(cfg.data.name, cfg.data.root) for cfg in configs}):
        ensure_data(name, Path(root))


def ensure_data(name: str, root: Path) -> None:
    """One dataset verified (or fetched) under ``root``, its progress on stderr; RunError if impossible."""
    from rich.console import Console

    from vaecli.sources import DATASETS, DataUnavailableError, ensure_dataset

    console = Console(stderr=True)
    try:
        ensure_dataset(DATASETS[name], root, say=lambda message: console.print(f"[dim]{message}[/dim]"))
    except DataUnavailableError as error:
        raise RunError(str(error)) from None


def train(overrides: Sequence[str], cfg_flag: str | None, resolve: bool) -> Path:
    """Run one training through Hydra and return its run folder."""
    if cfg_flag is not None:
        print_config(overrides, cfg_flag, resolve)
        return Path.cwd()
    composed = compose(overrides, with_hydra=True)
    check_device(composed.device)
    prepare_data([composed])
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
    from vaecli.data import default_root
    from vaecli.sources import DATASETS, IDX_FILES

    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose from: {', '.join(DATASETS)}")
    folder = Path(root).expanduser() if root else default_root()
    for name in names:
        ensure_data(name, folder)
        print(f"{name}: {len(IDX_FILES)} verified files under {DATASETS[name].raw_dir(folder)}")


def sweep(overrides: Sequence[str], report_dir: str | None, grid: str) -> int:
    """Run (or, with ``report_dir``, only re-aggregate) a sweep; returns the exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    if report_dir is not None:
        folder = Path(report_dir).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; pass the sweep folder that `vae sweep` printed")
        if not any(folder.rglob(".hydra/overrides.yaml")):
            raise UsageError(f"{folder} holds no sweep members (no */.hydra/overrides.yaml); is it a sweep folder?")
        return report(folder, console)

    from vaecli import sweep as sweeps

    sweep_plan = sweeps.plan(overrides, grid)
    console.print(
        f"sweep of {len(sweep_plan.members)} members through the {sweep_plan.launcher} launcher into "
        f"[bold]{sweep_plan.sweep_dir}[/bold]"
    )
    prepare_data(sweep_plan.configs)
    sweeps.write_plan(sweep_plan)
    launch_error = None
    with sweeps.Monitor(sweep_plan.sweep_dir, len(sweep_plan.members), console):
        try:
            run_hydra(sweep_plan.arguments)
        except KeyboardInterrupt:
            launch_error = "interrupted"
        except Exception as error:  # a launcher that gave up (e.g. a job the scheduler killed)
            launch_error = f"{type(error).__name__}: {first_line(str(error))}"
    if launch_error:
        console.print(f"[yellow]the launcher reported: {launch_error}[/yellow]")
        if sweep_plan.launcher.startswith("submitit_slurm"):
            console.print("waiting for the sweep's other SLURM jobs to finish ...")
            sweeps.wait_for_scheduler(sweep_plan.sweep_dir)
    return report(sweep_plan.sweep_dir, console)


def report(folder: Path, console) -> int:
    """Aggregate a sweep folder, draw its figures, print the table; 1 if any member failed."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from vaecli.aggregate import LONG_CSV, SWEEP_CSV, aggregate
    from vaecli.sweep_figures import draw_all

    result = aggregate(folder)
    table, swept = result.table, result.swept
    figures = draw_all(folder, table, result.long, swept)

    shown = table.sort_values("test_neg_elbo_nats", na_position="last") if "test_neg_elbo_nats" in table else table
    out = Table(title=f"{len(table)} members, sorted by test -ELBO (test set, nats per image)")
    for column in ("member", "status", "-ELBO", "recon", "KL", "seconds"):
        out.add_column(column, justify="left" if column in ("member", "status") else "right", no_wrap=True)
    varying = [key for key in swept if key in table and table[key].nunique(dropna=False) > 1] or swept
    for _, row in shown.iterrows():
        label = " ".join(f"{key}={row.get(key)}" for key in varying) if row.get("member") else row.get("overrides")
        cells = [str(label), str(row.get("status", ""))]
        for column in ("test_neg_elbo_nats", "test_recon_nats", "test_kl_nats", "seconds"):
            value = row.get(column)
            cells.append("" if value is None or pd.isna(value) else f"{float(value):.2f}")
        out.add_row(*cells, style="red" if row.get("status") != "ok" else None)
    Console().print(out)
    console.print(f"wrote {folder / SWEEP_CSV}, {folder / LONG_CSV} and {len(figures)} figures")
    failed = table[table.status != "ok"] if "status" in table else table.iloc[0:0]
    if len(failed):
        console.print(f"[red]{len(failed)} of {len(table)} members failed:[/red]")
        for _, row in failed.iterrows():
            console.print(f"  {row['overrides']}: {row['error']}")
        return 1
    return 0
