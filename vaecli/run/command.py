"""`vae train` before Hydra: every check, the run's folder, then Hydra's main with :func:`vaecli.run.task.task`.

``vae train`` checks its overrides, device and data before Hydra makes a folder, claims the
folder, then runs the task through Hydra's main, which reaches the loop in one call
(:mod:`vaecli.run.task`). Errors come back as one line: usage (exit 2), run (exit 1), or stopped
(130/143, with the command that continues the run).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaecli.config import extras
from vaecli.config.hydra_bridge import compose, has_key, hydra_call, hydra_main, print_config, quote_value
from vaecli.config.runtime import pick_device
from vaecli.errors import RunError, Stopped, UsageError, VaeError, first_line
from vaecli.run import resume as resuming
from vaecli.run.signals import STOP, Interrupted, exit_code, signal_name
from vaecli.run.task import resume_command, task
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import lock


def train_run(
    overrides: Sequence[str], cfg_flag: str | None = None, resolve: bool = False, resume: str | None = None
) -> Path:
    """``vae train``: check everything, claim a folder, then train through Hydra; returns the run folder.

    ``resume`` (a run folder or its checkpoint) continues that run in its own folder instead.
    """
    if cfg_flag is not None:
        print_config(overrides, cfg_flag, resolve, task)
        return Path.cwd()
    main = hydra_main(task)
    with STOP.installed():
        try:
            run_dir, arguments = prepare(overrides, resume)  # holds the run folder's lock from here
        except Interrupted as error:  # a second Ctrl-C before training began
            raise Stopped(f"{signal_name(error.signum)} before training began", exit_code(error.signum)) from None
        try:
            with hydra_call(arguments):
                main()
        except VaeError:
            raise
        except KeyboardInterrupt as error:  # a second signal while training
            raise stopped(run_dir, getattr(error, "signum", None) or STOP.signum or signal.SIGINT) from None
        except (RuntimeError, OSError, ValueError) as error:
            raise RunError(f"{type(error).__name__}: {first_line(error)}") from None
        finally:
            lock.release(run_dir)
    if STOP.signum is not None and (run_folder.read_result(run_dir) or {}).get("status") == "interrupted":
        raise stopped(run_dir, STOP.signum)
    return run_dir


def prepare(overrides: Sequence[str], resume: str | None) -> tuple[Path, list[str]]:
    """Every check before the first write, then the run's folder (its lock held) and Hydra's arguments for it.

    ``--resume`` takes the run's lock before its checks (a second process is refused at once) and
    lets go if a check refuses; a new run takes the lock of the folder it just claimed.
    """
    if resume is not None:
        run_dir, arguments, composed = resuming.prepare(resume, overrides)
        try:
            preflight([composed])
            refuse_if_stopped()
        except BaseException:
            lock.release(run_dir)
            raise
        return run_dir, arguments
    composed = compose(overrides, with_hydra=True)
    preflight([composed])
    refuse_if_stopped()
    run_dir, arguments = claim_folder(composed, overrides)
    lock.acquire(run_dir)
    return run_dir, arguments


def refuse_if_stopped() -> None:
    if STOP.signum is not None:  # during the data check: nothing was trained, nothing to continue
        raise Stopped(f"{signal_name(STOP.signum)} before training began", exit_code(STOP.signum))


def claim_folder(composed: DictConfig, overrides: Sequence[str]) -> tuple[Path, list[str]]:
    """This run's own folder: the one hydra.run.dir names (if it holds no run yet) or a fresh one."""
    if not str(composed.hydra.run.dir or "").strip():
        raise UsageError("hydra.run.dir is empty: name a folder for the run (or leave the default)")
    if has_key(overrides, "hydra.run.dir"):
        return run_folder.claim(Path(composed.hydra.run.dir)), list(overrides)
    run_dir = run_folder.claim_fresh(Path(composed.hydra.run.dir))
    return run_dir, [*overrides, f"hydra.run.dir={quote_value(str(run_dir))}"]


def stopped(run_dir: Path, signum: int) -> Stopped:
    """The one line a stopped `vae train` ends with, and its exit code (128 + the signal's number)."""
    result = run_folder.read_result(run_dir) or {}
    name, step, steps = signal_name(signum), result.get("step"), result.get("steps")
    if not (run_dir / run_folder.CHECKPOINT).is_file():
        return Stopped(f"run {run_dir} interrupted by {name} before its first checkpoint", exit_code(signum))
    where = f"at step {step} of {steps}" if steps is not None else f"at step {step}"
    message = (
        f"run {run_dir} interrupted by {name} {where} (checkpoint saved); continue it with: {resume_command(run_dir)}"
    )
    return Stopped(message, exit_code(signum))


def preflight(configs: Iterable[DictConfig]) -> None:
    """Device and data checked before Hydra makes folders: a run that cannot start leaves none behind."""
    from vaecli.data.sources import ensure_data
    from vaecli.measure.disentanglement.evaluate import check_disentanglement
    from vaecli.objectives.registry import check_objective

    configs = list(configs)
    if any(cfg.logger.name == "tensorboard" for cfg in configs):
        extras.require("tensorboard", "logger=tensorboard")
    for device in sorted({cfg.device for cfg in configs}):
        pick_device(device)
    seen: set[str] = set()
    for cfg in configs:  # once per distinct data node: a folder dataset's path and size are part of it
        key = repr(sorted(OmegaConf.to_container(cfg.data, resolve=True).items()))
        if key in seen:
            continue
        seen.add(key)
        root = str(cfg.data.root)
        if Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
            raise UsageError(f"data.root={root} is a file, not a folder: point data.root at a folder for the datasets")
        ensure_data(str(cfg.data.name), Path(root), cfg.data)
    for cfg in configs:
        check_data_options(cfg)
        check_batch(cfg)
        check_objective(cfg)
        check_disentanglement(cfg)


def check_data_options(cfg: DictConfig) -> None:
    """MNIST's data settings that another dataset cannot honour: refused, not silently ignored."""
    from vaecli.data.registry import DATASETS

    entry, name = DATASETS.entry(str(cfg.data.name)), cfg.data.name
    if cfg.data.train_on == "all" and getattr(entry, "own_split", False):
        raise UsageError(f"data.train_on=all adds MNIST's test set; data={name} holds out its own: drop data.train_on")
    if cfg.data.binarize != "none" and getattr(entry, "binary", False):
        raise UsageError(f"data.binarize={cfg.data.binarize}: data={name}'s pixels are already 0 or 1; drop it")


def check_batch(cfg: DictConfig) -> None:
    """A batch no larger than the images it is cut from (it used to be cut down without a word)."""
    from vaecli.data.registry import DATASETS, options_for

    count = getattr(DATASETS.entry(str(cfg.data.name)), "count", None)
    if count is None:  # a registered dataset that cannot count its images before loading them
        return
    root = Path(cfg.data.root).expanduser()
    options = options_for(count, cfg.data)
    images = min(count(root, True, **options), cfg.data.limit or math.inf)
    if cfg.data.train_on == "all":
        images += min(count(root, False, **options), cfg.data.test_limit or math.inf)
    if cfg.train.batch_size > images:
        raise UsageError(
            f"train.batch_size={cfg.train.batch_size} is larger than the {int(images)} training images "
            f"(data={cfg.data.name}, data.limit={cfg.data.limit}): use a batch of at most {int(images)}"
        )
