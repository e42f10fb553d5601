"""Turn a sweep folder into one table and a few pictures, whatever state its members are in.

A member's status comes from its own result.json; one that never wrote "ok" or "failed"
(killed, cancelled, never started) is failed, with the scheduler's state when SLURM ran it.
Typed values come from each member's .hydra/config.yaml, never from override strings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from vaecli.sweep import PLAN_NAME
from vaecli.task import read_result

FINAL_COLUMNS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")
SWEEP_CSV, LONG_CSV = "sweep.csv", "metrics_long.csv"
PREFERRED_AXES = ("latent_size", "beta")


def member_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent.parent for path in sweep_dir.rglob(".hydra/overrides.yaml"))


def swept_keys(rows: list[dict[str, str]]) -> list[str]:
    keys: list[str] = []
    for overrides in rows:
        for key in overrides:
            if key not in keys:
                keys.append(key)
    return keys


def parse_overrides(member: Path) -> dict[str, str]:
    items = OmegaConf.load(member / ".hydra" / "overrides.yaml")
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
    if status in ("ok", "failed"):
        return {
            "status": status,
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
    return {"status": "failed", "error": error, "seconds": None, "slurm_job_id": job_id}


def final_metrics(metrics: pd.DataFrame) -> dict[str, float]:
    row: dict[str, float] = {}
    for split in ("train", "test"):
        rows = metrics[metrics.split == split]
        if rows.empty:
            continue
        last = rows.iloc[-1]
        row[f"{split}_step"] = int(last.step)
        row.update({f"{split}_{column}": float(last[column]) for column in FINAL_COLUMNS})
    return row


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
        config = OmegaConf.load(member / ".hydra" / "config.yaml")
        values = {key: OmegaConf.select(config, key) for key in dict.fromkeys([*PREFERRED_AXES, *keys])}
        values = {key: (str(list(value)) if OmegaConf.is_list(value) else value) for key, value in values.items()}
        row = {
            "member": str(member.relative_to(sweep_dir)),
            "overrides": " ".join(f"{k}={v}" for k, v in member_overrides.items()),
            **values,
        }
        row.update(member_status(member))
        metrics_path = member / "metrics.csv"
        if metrics_path.is_file() and metrics_path.stat().st_size > 0:
            metrics = pd.read_csv(metrics_path)
            row.update(final_metrics(metrics))
            long_frames.append(metrics.assign(member=row["member"], status=row["status"], **values))
        rows.append(row)
    rows += missing_members(sweep_dir, overrides)
    table = pd.DataFrame(rows)
    table.to_csv(sweep_dir / SWEEP_CSV, index=False)
    long = pd.concat(long_frames, ignore_index=True) if long_frames else pd.DataFrame()
    long.to_csv(sweep_dir / LONG_CSV, index=False)
    return SweepReport(table, long, keys)


def missing_members(sweep_dir: Path, found: list[dict[str, str]]) -> list[dict[str, object]]:
    """Members the plan named that have no folder at all (a cluster that never ran them)."""
    plan_path = sweep_dir / PLAN_NAME
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
