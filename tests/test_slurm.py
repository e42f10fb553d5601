"""`vae sweep` through submitit_slurm against a real SLURM cluster (scripts/slurm-local.sh)."""

import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import invoke

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "threads=0",  # automatic: each member must pin itself to the CPUs SLURM gives it
    "hydra.launcher.timeout_min=10",
]


def sacct_states(sweep_dir) -> dict[str, str]:
    """State of every SLURM job whose id a member recorded, as sacct reports it."""
    states = {}
    for result in sweep_dir.glob("*/result.json"):
        job_id = json.loads(result.read_text()).get("slurm_job_id")
        done = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", str(job_id)], capture_output=True, text=True, check=True
        )
        states[result.parent.name] = done.stdout.strip()
    return states


def wait_for_sacct(sweep_dir, expected: str, members: int, timeout_s: float = 30) -> dict[str, str]:
    """sacct can lag a moment behind the jobs themselves."""
    deadline = time.time() + timeout_s
    while True:
        states = sacct_states(sweep_dir)
        if (len(states) == members and all(s.startswith(expected) for s in states.values())) or time.time() > deadline:
            return states
        time.sleep(1)


def test_grid_runs_as_slurm_jobs_and_aggregates(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "slurm"
    result = invoke(runner, "sweep", *tiny, "beta=0,0.5", "latent_size=2,4", *SLURM, f"hydra.sweep.dir={sweep_dir}")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4 and set(table.status) == {"ok"} and table.slurm_job_id.notna().all()
    for member in table.member:
        assert (sweep_dir / member / "checkpoint.pt").is_file() and (sweep_dir / member / "metrics.csv").is_file()
        assert "(cpu, 1 threads)" in (sweep_dir / member / "train.log").read_text()  # pinned to cpus_per_task
    states = wait_for_sacct(sweep_dir, "COMPLETED", 4)
    assert set(states.values()) == {"COMPLETED"}, states
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # the scheduler's logs land in the sweep


def test_failing_member_is_recorded_while_the_others_complete(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "failing"
    result = invoke(runner, "sweep", *tiny, "beta=0,0.5", "train.lr=1e-3,1e6", *SLURM, f"hydra.sweep.dir={sweep_dir}")
    assert result.exit_code == 1
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert sorted(table.status) == ["failed", "failed", "ok", "ok"]
    assert table[table.status == "failed"].error.str.contains("TrainingDiverged").all()  # lr=1e6 diverges


def test_cancelled_member_is_interrupted_and_the_rerun_continues_it(runner, tiny, tmp_path):
    """scancel (like the time limit) sends SIGTERM: the member saves a checkpoint; a rerun of the sweep continues it."""
    sweep_dir = tmp_path / "cancelled"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    arguments = [*fixed, "beta=0", "train.steps=8,3000", *SLURM, f"hydra.sweep.dir={sweep_dir}"]
    command = [sys.executable, "-m", "vaecli", "sweep", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    long_member = sweep_dir / "train.steps=3000"
    deadline = time.time() + 180
    while not ((long_member / "metrics.csv").is_file() and "\n32," in (long_member / "metrics.csv").read_text()):
        assert time.time() < deadline and process.poll() is None, "the long member never started"
        time.sleep(0.2)
    job_id = json.loads((long_member / "result.json").read_text())["slurm_job_id"]
    subprocess.run(["scancel", str(job_id)], check=True)
    cancelled_at = time.time()
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert time.time() - cancelled_at < 90, "the sweep did not return after scancel"
    assert process.returncode == 1, stderr
    table = pd.read_csv(sweep_dir / "sweep.csv").set_index("member")
    assert table.loc["train.steps=8", "status"] == "ok"
    assert table.loc["train.steps=3000", "status"] == "interrupted"
    stopped_at = int(table.loc["train.steps=3000", "step"])
    assert 32 <= stopped_at < 3000
    result = json.loads((long_member / "result.json").read_text())
    assert result["signal"] == "SIGTERM" and result["step"] == stopped_at
    assert "interrupted at step" in stderr

    again = invoke(runner, "sweep", *arguments)
    assert again.exit_code == 0, again.output
    result = json.loads((long_member / "result.json").read_text())
    assert result["status"] == "ok" and result["resumed_from"] == stopped_at and result["step"] == 3000
    assert f"continuing at step {stopped_at + 1} of 3000" in (long_member / "train.log").read_text()
    assert not pd.read_csv(long_member / "metrics.csv").duplicated(["step", "split"]).any()
