"""The files of run and sweep folders: every name once, result.json, and choosing a fresh folder.

Readers (inspection, sweep reports) and writers (runs, sweeps) both take names from here, so
a renamed file cannot leave one side behind.
"""

from __future__ import annotations

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
PROVENANCE_JSON = "provenance.json"  # versions, host, command line, commit, data files' MD5s

# a sweep folder (beside its members' run folders)
PLAN_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
LONG_CSV = "metrics_long.csv"
LOSS_CURVES_PNG = "loss_curves.png"
RATE_DISTORTION_PNG = "rate_distortion.png"
NEG_ELBO_PNG = "neg_elbo.png"
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


def write_provenance(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / PROVENANCE_JSON, (json.dumps(record, indent=2, default=str) + "\n").encode())


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / PROVENANCE_JSON).read_text())
    except (OSError, ValueError):
        return None


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
