"""Continuing a run: which settings may change, and where a run (or a sweep member) continues from.

A run is what its config says, less where and how it runs (device, threads, data.root, the
progress bar, the checkpoint interval) and how long it runs (train.steps, train.epochs).
``vae train --resume RUN [train.steps=N]`` continues it in its own folder from its last
checkpoint; any other change would make a different run and is refused, naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaecli.config.hydra_bridge import compose, has_key, override_key, quote_value
from vaecli.config.schema import NEUTRAL_VALUES
from vaecli.errors import UsageError
from vaecli.objectives.registry import objective_columns
from vaecli.runfolder import checkpoint, lock
from vaecli.runfolder import files as run_folder
from vaecli.runfolder.metrics import kept_rows

log = logging.getLogger("vaecli")

# what may differ between runs without changing their results
PLACE_KEYS = ("device", "threads", "data.root", "train.progress", "train.checkpoint_every", "logger.name")
# what a continued run may change besides: its length
LENGTH_KEYS = ("train.steps", "train.epochs")
# a sweep member in one of these states continues from its checkpoint; a failed one starts again
CONTINUABLE = ("interrupted", "running", "ok")


def flatten(container: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in container.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def as_container(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    return {key: value for key, value in container.items() if key != "hydra"}  # type: ignore[union-attr]


def without(cfg: DictConfig | dict[str, Any], leave_out: Sequence[str]) -> dict[str, Any]:
    """The config without ``leave_out``, and without the keys the registries added (``model.name``,
    ``objective``) where they hold what a run from before them meant: its hash stays what it was."""
    container = copy.deepcopy(as_container(cfg))
    for key in leave_out:
        section, _, name = key.rpartition(".")
        (container.get(section, {}) if section else container).pop(name, None)
    for key, neutral in NEUTRAL_VALUES.items():
        section, _, name = key.rpartition(".")
        node = container.get(section, {}) if section else container
        if isinstance(node, dict) and name in node and node[name] == neutral:
            node.pop(name)
            if section and not node:
                container.pop(section)
    return container


def deciding_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config without where and how it runs: what decides a run's results."""
    return without(cfg, PLACE_KEYS)


def digest(cfg: DictConfig | dict[str, Any], leave_out: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(without(cfg, leave_out), sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """What decides a run's results: the resolved config without where and how it runs."""
    return digest(cfg, PLACE_KEYS)


def identity_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """What makes a run the same run: :func:`config_hash` without its length, which may grow."""
    return digest(cfg, PLACE_KEYS + LENGTH_KEYS)


# ----------------------------------------------------------------------------- vae train --resume


def prepare(target: str, overrides: Sequence[str]) -> tuple[Path, list[str], DictConfig]:
    """Check that RUN can continue with these overrides; returns its folder, Hydra's arguments and the config.

    Raises a one-line :class:`UsageError` (exit 2) for anything else, before anything is written.
    Returns holding the run folder's lock (:mod:`vaecli.runfolder.lock`); a refusal lets go of it.
    """
    folder = Path(target).expanduser()
    if folder.is_dir() and run_folder.holds_run(folder) and not (folder / run_folder.CHECKPOINT).is_file():
        raise UsageError(f"{folder} holds no checkpoint: the run stopped before its first one; start it anew")
    file = checkpoint.resolve(target)
    run_dir = file.parent
    if file.name != run_folder.CHECKPOINT or not (run_dir / run_folder.OVERRIDES_YAML).is_file():
        raise UsageError(f"--resume takes a run folder made by `vae train` or its {run_folder.CHECKPOINT}: {target}")
    if has_key(overrides, "hydra.run.dir"):
        raise UsageError("--resume continues the run in its own folder; leave out hydra.run.dir")
    lock.acquire(run_dir)  # before reading it: another process may be writing it
    try:
        return run_dir, *checked(run_dir, file, overrides)
    except BaseException:
        lock.release(run_dir)
        raise


def checked(run_dir: Path, file: Path, overrides: Sequence[str]) -> tuple[list[str], DictConfig]:
    """Hydra's arguments and the config that continue the run, or a one-line refusal; reads only."""
    from vaecli.run.bookkeeping import total_steps

    payload = checkpoint.load(file)
    state = checkpoint.training_state(payload, file)
    stored = OmegaConf.to_container(checkpoint.stored_config(payload, file))  # with keys added since it was made
    given = {override_key(item) for item in overrides}
    merged = [item for item in run_folder.read_overrides(run_dir) if override_key(item) not in given]
    merged += list(overrides)
    composed = compose(merged)
    refuse_changes(stored, composed, given)
    total, step = total_steps(composed, state["images"]), int(payload["step"])
    own = objective_columns(composed)
    kept_rows(run_dir / run_folder.METRICS_CSV, int(state["position"]["rows"]), own)  # damage refused before any write
    if total < step:
        raise UsageError(f"the run reached step {step}, past the {total} steps asked for; a run cannot be shortened")
    done = run_folder.read_result(run_dir) or {}
    if total == step and done.get("status") == "ok":
        raise UsageError(f"{run_dir} already completed its {step} steps; pass a larger train.steps to extend it")
    return [*merged, f"hydra.run.dir={quote_value(str(run_dir))}"], composed


def refuse_changes(stored: dict[str, Any], composed: DictConfig, given: set[str]) -> None:
    """The first setting that would make this a different run, named in one line."""
    before, after = flatten(as_container(stored)), flatten(as_container(composed))
    for group in ("model", "objective", "data"):  # another config group: name it, not its first differing key
        old, new = before.get(f"{group}.name"), after.get(f"{group}.name")
        if old is not None and new is not None and old != new:
            raise UsageError(
                f"{group}={new} cannot replace the run's {group}={old} when resuming; start a new run for {group}={new}"
            )
    for key in sorted(set(before) | set(after)):
        if key in PLACE_KEYS or key in LENGTH_KEYS or before.get(key) == after.get(key):
            continue
        old, new = before.get(key, "<unset>"), after.get(key, "<unset>")
        if key in given:
            raise UsageError(
                f"{key} cannot change when resuming (the run has {key}={old}); start a new run for {key}={new}"
            )
        raise UsageError(f"the run has {key}={old} where today's config gives {new}; pass {key}={old} to resume it")


# ----------------------------------------------------------------------------- inside the task


def resume_point(cfg: DictConfig, out_dir: Path, previous: dict[str, Any] | None, sweeping: bool) -> dict | None:
    """The checkpoint this run continues from, or None to start at step 0.

    A sweep member continues when it was interrupted, killed (still "running") or completed with a
    shorter length; a failed one starts again. ``vae train --resume`` was checked before Hydra ran.
    """
    from vaecli.run.bookkeeping import total_steps

    file = out_dir / run_folder.CHECKPOINT
    if not file.is_file() or (sweeping and (previous or {}).get("status") not in CONTINUABLE):
        return None
    try:
        payload = checkpoint.load(file)
        state = checkpoint.training_state(payload, file)
    except checkpoint.CheckpointError as error:
        if not sweeping:
            raise
        log.warning("starting again: %s", error)
        return None
    if identity_hash(payload["config"]) != identity_hash(cfg):
        return None
    if payload["step"] > total_steps(cfg, state["images"]):
        return None
    return payload
