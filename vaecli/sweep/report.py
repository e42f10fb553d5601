"""Turn a sweep folder into sweep.csv, comparison figures and a table, whatever state its members are in.

A member's status comes from its own result.json: "ok", "failed", or "interrupted" (stopped by a
signal with a checkpoint; rerunning the sweep continues it) with the step it reached. One that
never wrote any of them (killed, never started) is failed, with the scheduler's state when SLURM ran it.
Typed values come from each member's .hydra/config.yaml, never from override strings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from vaecli.config.schema import test_held_out
from vaecli.inspect import plots
from vaecli.objectives.terms import TERM_NAMES
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import provenance
from vaecli.runfolder.files import member_dirs, read_result
from vaecli.runfolder.metrics import METRIC_COLUMNS

PREFERRED_AXES = ("latent_size", "beta")
ROW_STYLES = {"failed": "red", "interrupted": "yellow"}
TABLE_COLUMNS = {
    "-ELBO": "test_neg_elbo_nats",
    "recon": "test_recon_nats",
    "KL": "test_kl_nats",
    "-IWAE": "test_nll_bound_nats",  # shown when members were evaluated (eval.iwae_k or vae evaluate)
    "AU": "test_active_units",
    "seconds": "seconds",
}
OPTIONAL_COLUMNS = ("test_nll_bound_nats", "test_active_units")


def swept_keys(rows: list[dict[str, str]]) -> list[str]:
    keys: list[str] = []
    for overrides in rows:
        for key in overrides:
            if key not in keys:
                keys.append(key)
    return keys


def parse_overrides(member: Path) -> dict[str, str]:
    items = OmegaConf.load(member / run_folder.OVERRIDES_YAML)
    pairs = (str(item).lstrip("+~").split("=", 1) for item in items)
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs if not pair[0].startswith("hydra")}


def scheduler_state(job_id: str | None) -> str | None:
    """SLURM's final word on a job (e.g. 'CANCELLED by 0', 'TIMEOUT'), where sacct answers."""
    if not job_id or shutil.which("sacct") is None:
        return None
    try:
        done = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return states[0] if states else None


def member_status(member: Path) -> dict[str, object]:
    result = read_result(member) or {}
    status = result.get("status")
    if status in ("ok", "failed", "interrupted"):
        return {
            "status": status,
            "step": result.get("step"),
            "error": result.get("error", ""),
            "seconds": result.get("seconds"),
            "slurm_job_id": result.get("slurm_job_id"),
        }
    job_id = result.get("slurm_job_id")
    state = scheduler_state(job_id)
    if state:
        error = f"SLURM job {job_id} ended as {state} before the run finished"
    elif status == "running":
        error = "the run stopped without a result (killed, or the machine went away)"
    else:
        error = "the run never started"
    return {"status": "failed", "step": None, "error": error, "seconds": None, "slurm_job_id": job_id}


def swept_value(config: Any, key: str) -> Any:
    """A member's typed value of ``key``; a config group chosen by name (``objective=tcvae``) gives its name."""
    value = OmegaConf.select(config, key)
    if OmegaConf.is_dict(value) and "name" in value:
        return value.name
    return str(list(value)) if OmegaConf.is_list(value) else value


def final_metrics(metrics: pd.DataFrame) -> dict[str, float]:
    row: dict[str, float] = {}
    for split in ("train", "test"):
        rows = metrics[metrics.split == split]
        if rows.empty:
            continue
        last = rows.iloc[-1]
        row[f"{split}_step"] = int(last.step)
        row.update({f"{split}_{column}": float(last[column]) for column in TERM_NAMES})
        own = [column for column in metrics.columns if column not in METRIC_COLUMNS]  # an objective's own terms
        row.update({f"{split}_{column}": float(last[column]) for column in own if pd.notna(last[column])})
    if "nats_are" in metrics and len(metrics):
        row["nats_are"] = str(metrics.nats_are.iloc[-1])  # log-likelihood, or cross-entropy on grey levels
    return row


def evaluation_columns(report: dict | None) -> dict[str, object]:
    """A member's bound and active units (its evaluation.json, or the evaluation in result.json), by split."""
    if not report:
        return {}
    setup, bound, usage = report.get("setup", {}), report.get("bound", {}), report.get("latents", {})
    split = setup.get("split", "test")
    return {
        f"{split}_nll_bound_nats": bound.get("nll_bound_nats"),
        f"{split}_nll_bound_se": bound.get("nll_bound_se"),
        f"{split}_nll_bound_bits_per_dim": bound.get("nll_bound_bits_per_dim"),
        f"{split}_active_units": usage.get("active_units"),
        "iwae_k": setup.get("k"),
        "iwae_images": setup.get("images"),
    }


DISENTANGLEMENT_COLUMNS = {  # sweep.csv column: (metric in disentanglement.json, its key)
    "mig": ("mig", "mig"),
    "chen_mig": ("chen_mig", "chen_mig"),
    "dci_disentanglement": ("dci", "disentanglement"),
    "dci_completeness": ("dci", "completeness"),
    "dci_informativeness": ("dci", "informativeness"),
    "dci_learner": ("dci", "learner"),  # the exact (100 stages) or the fast DCI, named beside its figures
    "sap": ("sap", "sap"),
    "modularity": ("modularity_explicitness", "modularity"),
    "explicitness": ("modularity_explicitness", "explicitness"),
    "factor_vae_score": ("factor_vae_score", "factor_vae_score"),
    "beta_vae_score": ("beta_vae_score", "beta_vae_score"),
}


def disentanglement_columns(path: Path) -> dict[str, object]:
    """A member's disentanglement metrics (its disentanglement.json, when it ran them)."""
    import json

    try:
        found = json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        return {}
    return {column: found.get(metric, {}).get(key) for column, (metric, key) in DISENTANGLEMENT_COLUMNS.items()}


@dataclass
class SweepReport:
    table: pd.DataFrame  # one row per member (sweep.csv)
    long: pd.DataFrame  # every member's metrics rows (metrics_long.csv)
    swept: list[str]  # the keys the members' overrides set


def aggregate(sweep_dir: Path) -> SweepReport:
    """Write sweep.csv and metrics_long.csv for a sweep folder, whatever state it is in."""
    sweep_dir = Path(sweep_dir)
    members = member_dirs(sweep_dir)
    overrides = [parse_overrides(member) for member in members]
    keys = swept_keys(overrides)
    rows, long_frames = [], []
    for member, member_overrides in zip(members, overrides):
        config = OmegaConf.load(member / run_folder.CONFIG_YAML)
        values = {key: swept_value(config, key) for key in dict.fromkeys([*PREFERRED_AXES, *keys])}
        row = {
            "member": str(member.relative_to(sweep_dir)),
            "overrides": " ".join(f"{k}={v}" for k, v in member_overrides.items()),
            **values,
            "held_out": test_held_out(config),  # false: its test_* columns are on images it trained on
        }
        row.update(member_status(member))
        row.update(provenance.sweep_columns(member))
        metrics_path = member / run_folder.METRICS_CSV
        if metrics_path.is_file() and metrics_path.stat().st_size > 0:
            metrics = pd.read_csv(metrics_path)
            row.update(final_metrics(metrics))
            long_frames.append(metrics.assign(member=row["member"], status=row["status"], **values))
        row.update(evaluation_columns(run_folder.read_evaluation(member)))
        row.update(disentanglement_columns(member / run_folder.DISENTANGLEMENT_JSON))
        rows.append(row)
    rows += missing_members(sweep_dir, overrides)
    table = pd.DataFrame(rows)
    table.to_csv(sweep_dir / run_folder.SWEEP_CSV, index=False)
    long = pd.concat(long_frames, ignore_index=True) if long_frames else pd.DataFrame()
    long.to_csv(sweep_dir / run_folder.LONG_CSV, index=False)
    return SweepReport(table, long, keys)


def missing_members(sweep_dir: Path, found: list[dict[str, str]]) -> list[dict[str, object]]:
    """Members the plan named that have no folder at all (a cluster that never ran them)."""
    plan_path = sweep_dir / run_folder.PLAN_JSON
    if not plan_path.is_file():
        return []
    planned = json.loads(plan_path.read_text())["members"]
    seen = [sorted(f"{k}={v}" for k, v in item.items()) for item in found]
    missing = []
    for member in planned:
        items = sorted(item.lstrip("+~") for item in member if not item.startswith("hydra"))
        if items not in seen:
            missing.append(
                {
                    "member": "",
                    "overrides": " ".join(items),
                    "status": "failed",
                    "error": "the run never started",
                    **dict(item.split("=", 1) for item in items),
                }
            )
    return missing


def report(folder: Path, console) -> int:
    """Aggregate a sweep folder, draw its figures, print the table; 1 if any member failed."""
    from rich.console import Console
    from rich.table import Table

    if not member_dirs(folder):  # the launcher gave up before any member began
        console.print(f"[red]no member of the sweep in {folder} began: nothing to report[/red]")
        return 1
    result = aggregate(folder)
    table, swept = result.table, result.swept
    figures = draw_all(folder, table, result.long, swept)

    shown = table.sort_values("test_neg_elbo_nats", na_position="last") if "test_neg_elbo_nats" in table else table
    seen = table.held_out.eq(False) if "held_out" in table else pd.Series(False, index=table.index)
    nats_are = ", ".join(sorted(table.nats_are.dropna().unique())) if "nats_are" in table else ""
    out = Table(title=table_title(len(table), int(seen.sum()), nats_are))
    columns = {name: key for name, key in TABLE_COLUMNS.items() if key in table or key not in OPTIONAL_COLUMNS}
    for column in ("member", "status", *columns):
        out.add_column(column, justify="left" if column in ("member", "status") else "right", no_wrap=True)
    varying = [key for key in swept if key in table and table[key].nunique(dropna=False) > 1] or swept
    for index, row in shown.iterrows():
        label = " ".join(f"{key}={row.get(key)}" for key in varying) if row.get("member") else row.get("overrides")
        cells = [f"{label}{'*' if seen[index] else ''}", status_text(row)]
        for column in columns.values():
            value = row.get(column)
            digits = 0 if column == "test_active_units" else 2
            cells.append("" if value is None or pd.isna(value) else f"{float(value):.{digits}f}")
        out.add_row(*cells, style=ROW_STYLES.get(str(row.get("status"))))
    Console().print(out)
    print_best_trial(folder, Console())
    console.print(f"wrote {folder / run_folder.SWEEP_CSV}, {folder / run_folder.LONG_CSV} and {len(figures)} figures")
    unfinished = table[table.status != "ok"] if "status" in table else table.iloc[0:0]
    failed = unfinished[unfinished.status == "failed"]
    if len(failed):
        console.print(f"[red]{len(failed)} of {len(table)} members failed:[/red]")
        for _, row in failed.iterrows():
            console.print(f"  {row['overrides']}: {row['error']}")
    stopped = unfinished[unfinished.status == "interrupted"]
    if len(stopped):
        console.print(
            f"[yellow]{len(stopped)} of {len(table)} members interrupted[/yellow] (running the sweep again "
            "into this folder continues them from their checkpoints):"
        )
        for _, row in stopped.iterrows():
            console.print(f"  {row['overrides']}: {status_text(row)}")
    return 1 if len(unfinished) else 0


def status_text(row: pd.Series) -> str:
    """A member's status for the table: ``interrupted at step 512`` names where it stopped."""
    status, step = str(row.get("status", "")), row.get("step")
    if status == "interrupted" and step is not None and not pd.isna(step):
        return f"interrupted at step {int(step)}"
    return status


def table_title(members: int, trained_on_test: int, nats_are: str = "") -> str:
    """The sweep table's title: its -ELBO is held out only where no member trained on the test images;
    its nats are a log-likelihood or a cross-entropy (``nats_are``)."""
    unit = f"nats per image: {nats_are}" if nats_are else "nats per image"
    if not trained_on_test:
        return f"{members} members, sorted by test -ELBO (test set, {unit})"
    return (
        f"{members} members, sorted by -ELBO on the test images ({unit})\n"
        f"[yellow]* {trained_on_test} of {members} trained on them (data.train_on=all): not held out[/yellow]"
    )


def print_best_trial(folder: Path, console) -> None:
    """An Optuna search's answer, as its sweeper wrote it (optimization_results.yaml); nothing for a grid."""
    path = folder / run_folder.BEST_TRIAL_YAML
    if not path.is_file():
        return
    found = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(found, dict)
    counts = f"{found['trials']} trials, {found['completed']} completed, {found['failed']} failed"
    best = found.get("best_trial")
    if not best:
        console.print(f"[red]Optuna search: {counts}; no best trial[/red]")
        return
    values = " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in found["best_params"].items()
    )
    where = Path(best.get("output_dir", ""))
    member = where.relative_to(folder.resolve()) if where.is_relative_to(folder.resolve()) else where
    console.print(
        f"[bold green]best trial[/bold green] of the Optuna search ({counts}): [bold]{values}[/bold], "
        f"{found['objective']} = {found['best_value']:.4g} ({found['direction']}), in {member}"
    )


def draw_all(sweep_dir: Path, table: pd.DataFrame, long: pd.DataFrame, swept: list[str]) -> list[Path]:
    """The sweep's comparison figures, a share of them drawn by a forked helper (see :class:`FileHelpers`)."""
    from vaecli.config.runtime import usable_cpus
    from vaecli.sweep.file_helpers import FileHelpers

    figures = figure_jobs(sweep_dir, table, long, swept)
    helpers = FileHelpers(lambda k: figures[k].draw(), list(range(len(figures))), usable_cpus() - 1)
    written: list[Path | None] = []
    try:
        for k, figure in enumerate(figures):
            if not helpers.written(k):
                written.append(figure.draw())
            elif k in helpers.written_here:  # drawn here before the helpers were forked
                written.append(helpers.written_here[k])
            else:  # by a helper, which may have found nothing to draw
                written.append(figure.path if figure.path.is_file() else None)
    finally:
        helpers.close()
    return [path for path in written if path is not None]


@dataclass
class Figure:
    """One comparison figure to draw: where it goes and how (None from ``draw``: nothing to show)."""

    path: Path
    draw: Callable[[], Path | None]


def figure_jobs(sweep_dir: Path, table: pd.DataFrame, long: pd.DataFrame, swept: list[str]) -> list[Figure]:
    colour, facet = plots.axes(table, swept)
    jobs: list[Figure] = []
    done = table[table.status == "ok"] if "status" in table else table
    if not done.empty and "test_kl_nats" in done:
        path = sweep_dir / run_folder.RATE_DISTORTION_PNG
        jobs.append(Figure(path, partial(plots.rate_distortion, done, path, colour, facet)))
        path = sweep_dir / run_folder.NEG_ELBO_PNG
        jobs.append(Figure(path, partial(plots.final_against, done, path, colour, facet)))
    if not done.empty and "test_nll_bound_nats" in done and done.test_nll_bound_nats.notna().any():
        measured, path = done[done.test_nll_bound_nats.notna()], sweep_dir / run_folder.BOUND_PNG
        jobs.append(Figure(path, partial(plots.bound_and_active_units, measured, path, colour, facet)))
    if not done.empty and "mig" in done and done.mig.notna().any():
        measured, path = done[done.mig.notna()], sweep_dir / run_folder.DISENTANGLEMENT_PNG
        jobs.append(Figure(path, partial(plots.disentanglement_against, measured, path, colour, facet)))
    for image_name in run_folder.MONTAGE_SOURCES:
        path = sweep_dir / run_folder.montage_name(image_name)
        jobs.append(Figure(path, partial(member_montage, sweep_dir, table, image_name, colour, facet)))
    if not long.empty:  # the costliest last: a helper takes it first (they start from the back)
        path = sweep_dir / run_folder.LOSS_CURVES_PNG
        jobs.append(Figure(path, partial(plots.loss_curves, long, path, colour, facet)))
    return jobs


def member_montage(sweep_dir: Path, table: pd.DataFrame, image_name: str, colour: str, facet: str) -> Path | None:
    """Every member's ``image_name``: ``colour`` key along columns, ``facet`` key down rows."""
    from vaecli.inspect.images import montage

    cells = {}
    for _, row in table.iterrows():
        image_path = sweep_dir / str(row.get("member", "")) / image_name
        if row.get("member") and image_path.is_file():
            cells[(row.get(facet), row.get(colour))] = image_path
    if not cells:
        return None
    rows = sorted({key[0] for key in cells}, key=plots.sort_key)
    columns = sorted({key[1] for key in cells}, key=plots.sort_key)
    path = sweep_dir / run_folder.montage_name(image_name)
    montage(cells, rows, columns, facet, colour).save(path)
    return path
