"""The files of run and sweep folders: every name once, result.json, and choosing a fresh folder.

Readers (inspection, sweep reports) and writers (runs, sweeps) both take names from here, so
a renamed file cannot leave one side behind.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vaecli.atomic import atomic_write_bytes

# a run folder (Hydra adds .hydra/ and train.log, named by conf/config.yaml)
HYDRA_DIR = ".hydra"
CONFIG_YAML = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_YAML = f"{HYDRA_DIR}/overrides.yaml"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
TRAVERSAL_PNG = "traversal.png"
CHECKPOINT = "checkpoint.pt"
RESULT_JSON = "result.json"
EVALUATION_JSON = "evaluation.json"  # what `vae evaluate` (or eval.iwae_k) measured
EVALUATION_DIMS_CSV = "evaluation_dims.csv"  # its per-latent-dimension figures

# a sweep folder (beside its members' run folders)
PLAN_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
LONG_CSV = "metrics_long.csv"
LOSS_CURVES_PNG = "loss_curves.png"
RATE_DISTORTION_PNG = "rate_distortion.png"
NEG_ELBO_PNG = "neg_elbo.png"
BOUND_PNG = "bound_active_units.png"  # the test bound and active units against beta
MONTAGE_SOURCES = (RECONSTRUCTIONS_PNG, TRAVERSAL_PNG)


def montage_name(image_name: str) -> str:
    """The sweep folder's montage of every member's ``image_name``."""
    return f"montage_{image_name}"


def write_result(run_dir: Path, **fields: Any) -> None:
    payload = json.dumps(fields, indent=2, default=str) + "\n"
    atomic_write_bytes(run_dir / RESULT_JSON, payload.encode())


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / RESULT_JSON).read_text())
    except (OSError, ValueError):
        return None


def write_evaluation(run_dir: Path, report: dict[str, Any], dimension_rows: list[dict[str, Any]]) -> list[Path]:
    """evaluation.json and its per-dimension CSV, each written whole or not at all."""
    json_path, csv_path = run_dir / EVALUATION_JSON, run_dir / EVALUATION_DIMS_CSV
    atomic_write_bytes(json_path, (json.dumps(report, indent=2) + "\n").encode())
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dimension_rows[0]) if dimension_rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(dimension_rows)
    atomic_write_bytes(csv_path, table.getvalue().encode())
    return [json_path, csv_path]


def read_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run's evaluation.json, else the evaluation its result.json carries (eval.iwae_k), else None."""
    try:
        return json.loads((run_dir / EVALUATION_JSON).read_text())
    except (OSError, ValueError):
        return (read_result(run_dir) or {}).get("evaluation")


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2`` ... when a run started in the same second took it."""
    candidate, number = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def member_dirs(sweep_dir: Path) -> list[Path]:
    """Every run folder under a sweep folder (each has its .hydra/overrides.yaml)."""
    return sorted(path.parent.parent for path in sweep_dir.rglob(OVERRIDES_YAML))
