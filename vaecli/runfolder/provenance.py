"""Where a run came from: versions, machine, command line, the project's commit, the data files read.

Written when training starts (``provenance.json`` beside ``result.json``), as soon as the data
files are read and the device is known; ``vae sweep --report`` carries the versions into sweep.csv.
A continued run keeps the record of the process that started it and appends each continuing
process's own under ``resumes``, since a resumed run's numbers depend on every machine it ran on.
The command line is the ``vae`` process's own: Hydra's main runs with an argv of its own, and
sweep members may run in other processes (joblib workers, SLURM jobs), so
:func:`vaecli.config.hydra_bridge.run_hydra` hands it on in the environment (:data:`COMMAND_ENV`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from vaecli import __version__
from vaecli.config.hydra_bridge import COMMAND_ENV
from vaecli.runfolder import files as run_folder

PACKAGES = {"torch": "torch", "torchvision": "torchvision", "hydra": "hydra-core"}  # name -> distribution
GIT_TIMEOUT_S = 10


def versions() -> dict[str, str | None]:
    """vaecli, Python and the libraries whose behaviour decides a run's numbers."""
    found: dict[str, str | None] = {"vaecli": __version__, "python": platform.python_version()}
    for name, distribution in PACKAGES.items():
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def command() -> list[str]:
    """The command line that started this run, as its `vae` process received it."""
    handed_on = os.environ.get(COMMAND_ENV)
    if handed_on:
        try:
            return list(json.loads(handed_on))
        except (ValueError, TypeError):
            pass
    return list(sys.argv)


def git_state(folder: Path | None = None) -> dict[str, Any]:
    """The commit (and uncommitted changes) of the checkout vaecli runs from; {} when it is not one.

    Only a repository that tracks this very package counts, so a venv inside some other project's
    repository does not lend that project's commit. Read-only: ``--no-optional-locks`` keeps
    parallel members from contending for the index lock.
    """
    folder = folder or Path(__file__).resolve().parents[1]  # the vaecli package folder

    def git(*arguments: str) -> subprocess.CompletedProcess:
        call = ["git", "--no-optional-locks", "-C", str(folder), *arguments]
        return subprocess.run(call, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return {}
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {
        "git_commit": head.stdout.strip(),
        "git_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def collect(cfg: Any, device: Any, threads: int, data_files: Iterable[Any]) -> dict[str, Any]:
    """Everything provenance.json holds for a run on ``device`` with ``threads`` that read ``data_files``."""
    record: dict[str, Any] = {"versions": versions(), **git_state(), "command": command()}
    record.update(host=platform.node(), platform=platform.platform(), device=str(device), threads=threads)
    if getattr(device, "type", None) == "cuda":
        import torch

        record["gpu"] = torch.cuda.get_device_name(device)
    unique = list(dict.fromkeys(data_files))  # data=folder's splits come from one cache file: name it once
    record["data"] = {"name": str(cfg.data.name), "files": [asdict(file) for file in unique]}
    if cfg.data.get("path") is not None:  # data=folder: the folder read (its decoded cache is the file above)
        record["data"]["folder"] = str(Path(str(cfg.data.path)).expanduser().resolve())
    return record


def write(out_dir: Path, record: dict[str, Any], resumed_from: int = 0) -> None:
    """``record`` (:func:`collect`'s) as the run's provenance.json; a run continued at ``resumed_from`` > 0
    keeps its earlier record and adds this one to ``resumes``."""
    earlier = run_folder.read_provenance(out_dir) if resumed_from else None
    if earlier is not None:
        record = {**earlier, "resumes": [*earlier.get("resumes", []), {"from_step": resumed_from, **record}]}
    run_folder.write_provenance(out_dir, record)


def sweep_columns(member: Path) -> dict[str, Any]:
    """A member's versions (and commit) as sweep.csv columns: ``torch_version``, ..., ``git_commit``."""
    record = run_folder.read_provenance(member) or {}
    columns = {f"{name}_version": value for name, value in (record.get("versions") or {}).items()}
    if "git_commit" in record:
        columns["git_commit"] = record["git_commit"]
    return columns
