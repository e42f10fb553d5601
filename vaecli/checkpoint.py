"""Checkpoints as plain data: written atomically, loaded with ``weights_only=True``.

A checkpoint carries its resolved config, so any command can rebuild the model from it alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "vaecli-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """The path is not a usable checkpoint; the message says why and what to do."""


def atomic_save(payload: Any, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(to_cpu(value) for value in state)
    return state


def save(
    path: Path,
    *,
    config: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    rng: dict[str, torch.Tensor],
    final: dict | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "step": step,
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "rng": to_cpu(rng),
        "final": final or {},
    }
    atomic_save(payload, path)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder that holds one."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / CHECKPOINT_NAME
        if not candidate.is_file():
            raise CheckpointError(
                f"{path} is a folder without {CHECKPOINT_NAME}; pass a run folder made by `vae train`"
            )
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a checkpoint.pt or a run folder")
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load on the CPU (whatever device wrote it) and check that it is ours."""
    file = resolve(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{file} is not a readable checkpoint ({first[:160]}); it may be truncated or not made by vaecli"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a vaecli checkpoint; pass the checkpoint.pt that `vae train` wrote")
    return payload
