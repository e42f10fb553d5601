"""`vae sweep`: plan a grid (or an Optuna search), check its members, run it through Hydra's multirun, report.

Every member is an ordinary run of :func:`vaecli.run.task.task` in its own folder. Members record their
own status (result.json), so aggregation works the same for the basic launcher, joblib,
submitit and a sweep folder copied back from a cluster, and never depends on Hydra callbacks.

SIGINT/SIGTERM to `vae sweep` writes the sweep's stop file: running members (in this process or
in workers and jobs it cannot signal) save a checkpoint and record "interrupted", members not yet
started do not start, and running the same command again continues them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from shlex import quote
from typing import Any

from omegaconf import OmegaConf

from vaecli.config import extras
from vaecli.config.hydra_bridge import compose, compose_all, expand_sweep, has_key, override_key, quote_value, run_hydra
from vaecli.config.schema import NOT_HELD_OUT, test_held_out
from vaecli.errors import Stopped, UsageError, first_line
from vaecli.run.signals import STOP, Interrupted, exit_code, signal_name
from vaecli.runfolder import files as run_folder
from vaecli.runfolder import lock
from vaecli.sweep import checks

SWEEP_SYNTAX = (",", "range(", "choice(", "glob(", "interval(")
# an Optuna trial's folder: its number keeps two trials with the same values apart
TRIAL_SUBDIR = "${hydra.job.num}_${hydra.job.override_dirname}"


@dataclass
class SweepPlan:
    task_overrides: list[str]
    hydra_overrides: list[str]
    members: list[list[str]]  # every member's overrides (none known ahead for an Optuna search)
    sweep_dir: Path
    launcher: str
    configs: list[Any]  # each member's composed config (an Optuna search: its probes), already checked
    arguments: list[str] = field(default_factory=list)
    total: int = 0  # members to run: the grid's size, or an Optuna search's n_trials
    sweeper: str = "basic"


def is_hydra_override(item: str) -> bool:
    key = override_key(item)
    return key.startswith("hydra.") or key.startswith("hydra/")


def is_sweep(item: str) -> bool:
    value = item.split("=", 1)[1] if "=" in item else ""
    if value.startswith("[") or value.startswith("'") or value.startswith('"'):
        return False
    return any(token in value for token in SWEEP_SYNTAX)


def conf_yaml(*parts: str) -> dict | None:
    """A YAML file shipped in the vaecli.conf package, as a dict (None when absent)."""
    resource = resources.files("vaecli.conf").joinpath(*parts)
    if not resource.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.create(resource.read_text()))  # type: ignore[return-value]


def default_grid(name: str) -> dict:
    grid = conf_yaml("vae_sweep", "grids", f"{name}.yaml")
    if grid is None:
        raise UsageError(f"no sweep grid '{name}' in conf/vae_sweep/grids/; pass key=v1,v2 overrides instead")
    return grid


def launcher_choice(hydra_overrides: Sequence[str]) -> str:
    for item in hydra_overrides:
        if item.split("=", 1)[0] == "hydra/launcher":
            return item.split("=", 1)[1]
    return "basic"


def launcher_preset(launcher: str, hydra_overrides: Sequence[str]) -> list[str]:
    """vaecli's defaults for this launcher (conf/vae_sweep/launchers/<name>.yaml) the command line did not set."""
    preset = conf_yaml("vae_sweep", "launchers", f"{launcher}.yaml") or {}
    return [
        f"hydra.launcher.{key}={'null' if value is None else value}"
        for key, value in preset.items()
        if not has_key(hydra_overrides, f"hydra.launcher.{key}")
    ]


def plan(overrides: Sequence[str], grid: str = "default") -> SweepPlan:
    """Expand and check the whole grid (or an Optuna search's probes); nothing is written, so a bad
    value leaves no folder."""
    task = [item for item in overrides if not is_hydra_override(item)]
    hydra_part = [item for item in overrides if is_hydra_override(item)]
    launcher = launcher_choice(hydra_part)
    hydra_part = [*hydra_part, *launcher_preset(launcher, hydra_part)]
    composed = compose([*(item for item in task if not is_sweep(item)), *hydra_part], with_hydra=True)
    sweeper = composed.hydra.runtime.choices.get("hydra/sweeper") or "basic"
    checks.check_sweep_dir(composed)
    checks.check_launcher(composed)
    if sweeper == "optuna":
        checks.check_optuna(composed)
    if sweeper == "optuna":
        members, (checked, swept) = [], search_probes(task, composed.hydra.sweeper.params)
        total = int(composed.hydra.sweeper.n_trials)
        if not has_key(hydra_part, "hydra.sweep.subdir"):
            hydra_part.append(f"hydra.sweep.subdir={TRIAL_SUBDIR}")
    else:
        if not any(is_sweep(item) for item in task):
            given = {override_key(item) for item in task}
            params = composed.hydra.sweeper.get("params")  # an experiment's own grid (hydra.sweeper.params)
            values = {**default_grid(grid), **(OmegaConf.to_container(params) if params else {})}
            task = [f"{key}={value}" for key, value in values.items() if key not in given] + task
        members = checked = expand_sweep(task)
        swept, total = {override_key(item) for item in task if is_sweep(item)}, len(members)
    configs = compose_all(([*member, *hydra_part] for member in checked), with_hydra=True)
    fixed = [override_key(item) for item in task if override_key(item) not in swept]
    exclude_key = "hydra.job.config.override_dirname.exclude_keys"
    if fixed and not has_key(hydra_part, exclude_key):
        # name member folders by the swept keys alone: beta=0,latent_size=2
        excluded = [*OmegaConf.select(composed, exclude_key), *fixed]
        hydra_part.append(f"{exclude_key}=[{','.join(excluded)}]")
    sweep_dir = Path(composed.hydra.sweep.dir)
    arguments = ["--multirun", *task, *hydra_part]
    return SweepPlan(task, hydra_part, members, sweep_dir, launcher, configs, arguments, total, sweeper)


def search_probes(task: Sequence[str], params: Any) -> tuple[list[list[str]], set[str]]:
    """``hydra/sweeper=optuna``: a few trials to check before the search (each choice, both ends of
    each range: :meth:`SearchSpace.probes`) and the searched keys, from ``hydra.sweeper.params`` and
    the command line as the sweeper will read them."""
    extras.require("optuna", "hydra/sweeper=optuna")
    from hydra.errors import HydraException

    from vaecli.sweep.optuna.space import search_space

    try:
        space = search_space(task, params)
    except (ValueError, HydraException) as error:
        raise UsageError(f"hydra/sweeper=optuna: {first_line(error)}") from None
    if not space.distributions:
        raise UsageError(
            "hydra/sweeper=optuna needs a key to search, e.g. 'beta=tag(log, interval(0.001, 1))' "
            "or latent_size=range(2,21) (or a preset: search=NAME)"
        )
    return space.probes(), set(space.distributions)


def sweep(overrides: Sequence[str], report_dir: str | None, grid: str) -> int:
    """``vae sweep``: run (or, with ``report_dir``, only re-aggregate) a sweep; returns the exit code."""
    from rich.console import Console

    from vaecli.sweep.report import report

    console = Console(stderr=True)
    if report_dir is not None:
        folder = Path(report_dir).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; pass the sweep folder that `vae sweep` printed")
        if not run_folder.member_dirs(folder):
            raise UsageError(f"{folder} holds no sweep members (no */.hydra/overrides.yaml); is it a sweep folder?")
        with lock.Locked(folder, "sweep"):  # not while its sweep runs: one writer per folder
            return report(folder, console)

    from vaecli.run.command import preflight  # torch with it: not for --report

    sweep_plan = plan(overrides, grid)
    preflight(sweep_plan.configs)
    if not has_key(sweep_plan.hydra_overrides, "hydra.sweep.dir"):  # a new sweep: a folder of its own
        sweep_plan.sweep_dir = run_folder.claim_fresh(sweep_plan.sweep_dir, whole=True)
        sweep_plan.arguments.append(f"hydra.sweep.dir={quote_value(str(sweep_plan.sweep_dir))}")
    else:
        make_sweep_folder(sweep_plan.sweep_dir)
    with lock.Locked(sweep_plan.sweep_dir, "sweep"):  # one `vae sweep` per folder, the whole sweep long
        return run_sweep(sweep_plan, overrides, console)


def make_sweep_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the sweep folder {folder}: {error.strerror}; choose another hydra.sweep.dir"
        ) from None


def run_sweep(sweep_plan: SweepPlan, overrides: Sequence[str], console: Any) -> int:
    """The checked sweep, its folder locked: Hydra's multirun, then the report."""
    from vaecli.run.task import task
    from vaecli.sweep.report import report

    what = "Optuna search of {} trials" if sweep_plan.sweeper == "optuna" else "sweep of {} members"
    console.print(
        f"{what.format(sweep_plan.total)} through the {sweep_plan.launcher} launcher into "
        f"[bold]{sweep_plan.sweep_dir}[/bold]"
    )
    if not all(test_held_out(cfg) for cfg in sweep_plan.configs):
        console.print(f"[yellow]warning: {NOT_HELD_OUT}[/yellow]")
    write_plan(sweep_plan)
    stop_file = sweep_plan.sweep_dir / run_folder.STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by an earlier, stopped run of this sweep

    def stop_members(signum: int) -> None:
        stop_file.write_text(signal_name(signum) + "\n")
        console.print(f"[yellow]{signal_name(signum)}: members save a checkpoint and stop; again to quit at once[/]")

    (sweep_plan.sweep_dir / run_folder.GROUPS_JSON).unlink(missing_ok=True)  # the batched launcher writes it anew
    launch_error = None
    with STOP.installed(on_request=stop_members), Monitor(sweep_plan.sweep_dir, sweep_plan.total, console):
        try:
            run_hydra(task, sweep_plan.arguments)
        except Interrupted as error:  # a second signal: no report, members keep their last checkpoints
            launch_error = error
        except Exception as error:  # a launcher that gave up (e.g. a job the scheduler killed)
            launch_error = f"{type(error).__name__}: {first_line(error)}"
        signum = STOP.signum
    if isinstance(launch_error, Interrupted):
        again = f"`vae sweep --report {sweep_plan.sweep_dir}` aggregates it"
        raise Stopped(f"sweep {sweep_plan.sweep_dir} quit at once; {again}", exit_code(launch_error.signum))
    if launch_error:
        console.print(f"[yellow]the launcher reported: {launch_error}[/yellow]")
        if sweep_plan.launcher.startswith("submitit_slurm") and signum is None:
            console.print("waiting for the sweep's other SLURM jobs to finish ...")
            wait_for_scheduler(sweep_plan.sweep_dir)
    code = report(sweep_plan.sweep_dir, console)
    if any(cfg.logger.name == "tensorboard" for cfg in sweep_plan.configs):
        console.print(f"compare the members in TensorBoard: tensorboard --logdir {quote(str(sweep_plan.sweep_dir))}")
    if signum is not None:
        again = [item for item in overrides if override_key(item) != "hydra.sweep.dir"]
        again.append(f"hydra.sweep.dir={sweep_plan.sweep_dir}")
        command = shlex.join(["vae", "sweep", *again])
        message = f"sweep {sweep_plan.sweep_dir} interrupted by {signal_name(signum)}; continue it with: {command}"
        raise Stopped(message, exit_code(signum))
    return max(code, 1) if launch_error else code  # a sweep whose search or launcher failed never exits 0


def write_plan(sweep_plan: SweepPlan) -> None:
    sweep_plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "members": sweep_plan.members,
        "task_overrides": sweep_plan.task_overrides,
        "hydra_overrides": sweep_plan.hydra_overrides,
        "launcher": sweep_plan.launcher,
        "sweeper": sweep_plan.sweeper,
        "total": sweep_plan.total,
        "written": time.time(),
    }
    (sweep_plan.sweep_dir / run_folder.PLAN_JSON).write_text(json.dumps(payload, indent=2) + "\n")


class Monitor:
    """Polls member folders for their status and drives a rich progress bar.

    Under the batched launcher it also reads groups.json: which group trains and at which step, so
    the bar moves (and the ETA holds) while a group's members all finish at its last step.
    """

    def __init__(self, sweep_dir: Path, total: int, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.sweep_dir = sweep_dir
        self.progress = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[ok]} ok, {task.fields[failed]} failed, {task.fields[interrupted]} interrupted, "
                "{task.fields[running]} running"
            ),
            TextColumn("{task.fields[groups]}"),
            TimeRemainingColumn(),
            console=console,
            redirect_stderr=False,
            redirect_stdout=False,
        )
        self.task_id = self.progress.add_task(
            "members", total=total, ok=0, failed=0, interrupted=0, running=0, groups=""
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0, "interrupted": 0, "running": 0}
        for result in self.sweep_dir.rglob(run_folder.RESULT_JSON):
            try:
                status = json.loads(result.read_text()).get("status")
            except (OSError, ValueError):
                continue  # being written
            if status in counts:
                counts[status] += 1
        return counts

    def _poll(self) -> None:
        while not self.stopping.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        counts = self.counts()
        text, running_share = group_progress(self.sweep_dir)
        done = counts["ok"] + counts["failed"] + counts["interrupted"] + counts["running"] * running_share
        self.progress.update(self.task_id, completed=done, groups=text, **counts)

    def __enter__(self) -> Monitor:
        self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.refresh()
        self.progress.stop()


def group_progress(sweep_dir: Path) -> tuple[str, float]:
    """The batched launcher's groups as a few words, and how far its running group has got (0 to 1)."""
    groups = run_folder.read_groups(sweep_dir)
    if not groups:
        return "", 0.0
    running = [(number, group) for number, group in enumerate(groups) if group.get("state") == "running"]
    finished = sum(group.get("state") == "done" for group in groups)
    if not running:
        return f"{finished} of {len(groups)} groups done", 0.0
    number, group = running[0]
    step, steps = group.get("step") or 0, group.get("steps") or 0
    share = step / steps if steps else 0.0
    return f"group {number + 1} of {len(groups)} ({len(group['members'])} members) at step {step}/{steps}", share


def wait_for_scheduler(sweep_dir: Path, timeout_s: float = 3600) -> None:
    """After submitit gave up on one job, let the other SLURM array tasks finish before reporting."""
    job_ids = sorted({path.name.split("_")[0] for path in (sweep_dir / ".submitit").glob("*") if path.is_dir()})
    job_ids = [job_id for job_id in job_ids if job_id.isdigit()]
    deadline = time.time() + timeout_s
    while job_ids and time.time() < deadline:
        try:
            listed = subprocess.run(
                ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return
        if listed.returncode != 0 or not listed.stdout.strip():
            return
        time.sleep(2)
