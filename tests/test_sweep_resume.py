"""A sweep stopped by a signal under each launcher, then run again: its members continue from their checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import invoke

GRID = ["beta=0,0.5", "train.steps=3000"]  # long enough to be stopped mid-way on a loaded machine
MEMBERS = ("beta=0", "beta=0.5")


def reached(member_dir, step: int) -> bool:
    metrics = member_dir / "metrics.csv"
    return metrics.is_file() and f"\n{step}," in metrics.read_text()


@pytest.mark.parametrize(
    ("launcher", "whole_group", "signum"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], True, signal.SIGINT),  # Ctrl-C in a terminal
        (["hydra/launcher=submitit_local"], False, signal.SIGTERM),  # `kill` of the vae sweep process
        ([], False, signal.SIGTERM),  # the basic launcher: members inside the vae sweep process
    ],
    ids=["joblib-ctrl-c", "submitit_local-sigterm", "basic-sigterm"],
)
def test_a_stopped_sweep_continues_its_members(runner, tiny, tmp_path, launcher, whole_group, signum):
    sweep_dir = tmp_path / "sweep"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    arguments = [*fixed, *GRID, *launcher, f"hydra.sweep.dir={sweep_dir}"]
    command = [sys.executable, "-m", "vaecli", "sweep", *arguments]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    parallel = bool(launcher)
    deadline = time.time() + 240
    while not (all if parallel else any)(reached(sweep_dir / member, 32) for member in MEMBERS):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=180)

    assert process.returncode == 128 + signum, stderr
    assert "continue it with: vae sweep" in stderr and f"hydra.sweep.dir={sweep_dir}" in stderr
    table = pd.read_csv(sweep_dir / "sweep.csv").set_index("member")
    assert set(table.status) == {"interrupted"}, table
    stopped_at = {member: int(table.loc[member, "step"]) for member in MEMBERS}
    assert all(step < 3000 for step in stopped_at.values()) and max(stopped_at.values()) >= 32
    report = invoke(runner, "sweep", "--report", str(sweep_dir))
    assert report.exit_code == 1 and "interrupted at step" in report.stdout

    again = invoke(runner, "sweep", *arguments)
    assert again.exit_code == 0, again.output
    for member in MEMBERS:
        result = json.loads((sweep_dir / member / "result.json").read_text())
        assert result["status"] == "ok" and result["resumed_from"] == stopped_at[member]
        metrics = pd.read_csv(sweep_dir / member / "metrics.csv")
        assert not metrics.duplicated(["step", "split"]).any()  # no restart at step 1
        if stopped_at[member]:
            assert (
                f"continuing at step {stopped_at[member] + 1} of 3000" in (sweep_dir / member / "train.log").read_text()
            )
    assert set(pd.read_csv(sweep_dir / "sweep.csv").status) == {"ok"}
