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

# a sweep folder (beside its members' run folders)
PLAN_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
LONG_CSV = "metrics_long.csv"
LOSS_CURVES_PNG = "loss_curves.png"
RATE_DISTORTION_PNG = "rate_distortion.png"
NEG_ELBO_PNG = "neg_elbo.png"
GROUPS_JSON = "groups.json"  # the batched launcher's groups of members and how far each has got
MONTAGE_SOURCES = (RECONSTRUCTIONS_PNG, TRAVERSAL_PNG)


def montage_name(image_name: str) -> str:
    """The sweep folder's montage of every member's ``image_name``."""
    return f"montage_{image_name}"


def write_result(run_dir: Path, **fields: Any) -> None:
    write_json(run_dir / RESULT_JSON, fields)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / RESULT_JSON)


def write_groups(sweep_dir: Path, groups: list[dict[str, Any]]) -> None:
    write_json(sweep_dir / GROUPS_JSON, {"groups": groups})


def read_groups(sweep_dir: Path) -> list[dict[str, Any]] | None:
    """The batched launcher's groups (members, state, step, steps), or None for other launchers."""
    payload = read_json(sweep_dir / GROUPS_JSON)
    return payload.get("groups") if isinstance(payload, dict) else None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Written whole or not at all, so a reader polling it never sees half a file."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
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
