"""The files of run and sweep folders: every name once, result.json, and claiming a fresh folder.

Readers (inspection, sweep reports) and writers (runs, sweeps) both take names from here, so
a renamed file cannot leave one side behind. A run claims its folder before anything is written
into it, by creating the folder's ``.hydra/`` (a sweep: the folder itself): ``mkdir`` succeeds in
one process only, so two runs started in the same second never share a folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vaecli.atomic import atomic_write_bytes
from vaecli.errors import RunError, UsageError

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
RUN_FILES = (HYDRA_DIR, RESULT_JSON, CHECKPOINT, METRICS_CSV)  # any of them: the folder holds a run
PROVENANCE_JSON = "provenance.json"  # versions, host, command line, commit, data files' MD5s
TB_DIR = "tb"  # logger=tensorboard: the run's TensorBoard events
EVALUATION_JSON = "evaluation.json"  # what `vae evaluate` (or eval.iwae_k) measured
DISENTANGLEMENT_JSON = "disentanglement.json"  # what `vae evaluate --disentanglement` measured
EVALUATION_DIMS_CSV = "evaluation_dims.csv"  # its per-latent-dimension figures

# a sweep folder (beside its members' run folders)
PLAN_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
LONG_CSV = "metrics_long.csv"
LOSS_CURVES_PNG = "loss_curves.png"
RATE_DISTORTION_PNG = "rate_distortion.png"
NEG_ELBO_PNG = "neg_elbo.png"
STOP_FILE = ".stop"  # written by `vae sweep` on SIGINT/SIGTERM (the signal's name); members poll it
# hydra/sweeper=optuna: the search's best trial, written by vaecli/sweep/optuna/study.py
# (RESULTS_NAME there, the name Hydra's own Optuna plugin uses)
BEST_TRIAL_YAML = "optimization_results.yaml"
GROUPS_JSON = "groups.json"  # the batched launcher's groups of members and how far each has got
BOUND_PNG = "bound_active_units.png"  # the test bound and active units against beta
DISENTANGLEMENT_PNG = "disentanglement.png"  # each disentanglement metric against beta, by latent size
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


def read_overrides(run_dir: Path) -> list[str]:
    """The task overrides a run was started with (its .hydra/overrides.yaml)."""
    return [str(item) for item in OmegaConf.load(run_dir / OVERRIDES_YAML)]


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


class FolderTaken(UsageError):
    """The folder already holds a run: nothing in it is touched."""

    def __init__(self, path: Path):
        super().__init__(
            f"{path} already holds a run; continue it with `vae train --resume {path}`, or pick a new hydra.run.dir"
        )


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def claim(path: Path, whole: bool = False) -> Path:
    """Make ``path`` this process's folder, or raise :class:`FolderTaken` without touching it.

    The claim is one ``mkdir``, atomic among processes: of ``path/.hydra`` for a run, of ``path``
    itself (``whole``) for a sweep.
    """
    if holds_run(path):
        raise FolderTaken(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if whole:
            path.mkdir()
        else:
            path.mkdir(exist_ok=True)
            (path / HYDRA_DIR).mkdir()
    except FileExistsError:
        raise FolderTaken(path) from None
    except OSError as error:
        raise RunError(f"cannot create the folder {path}: {error.strerror}") from None
    return path


def claim_fresh(path: Path, whole: bool = False) -> Path:
    """``path``, or ``path-1``, ``path-2`` ... when a run started in the same second claimed it first."""
    candidate, number = path, 0
    while True:
        try:
            return claim(candidate, whole)
        except FolderTaken:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


def write_provenance(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / PROVENANCE_JSON, (json.dumps(record, indent=2, default=str) + "\n").encode())


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / PROVENANCE_JSON).read_text())
    except (OSError, ValueError):
        return None


def member_dirs(sweep_dir: Path) -> list[Path]:
    """Every run folder under a sweep folder (each has its .hydra/overrides.yaml)."""
    return sorted(path.parent.parent for path in sweep_dir.rglob(OVERRIDES_YAML))
