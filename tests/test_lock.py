"""One writer per folder: real `vae` processes on one run or sweep folder; the kernel's lock, never a stale one."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from tests.test_resume import LONG, VAE, start, stop, wait_for_step
from vaecli.runfolder import checkpoint, lock


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the MD5 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def saved_step(run_dir: Path) -> int:
    return int(checkpoint.load(run_dir)["step"])


def vae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VAE, *args], capture_output=True, text=True, timeout=300)


def assert_refused_as_busy(done: subprocess.CompletedProcess, folder: Path, holder: int) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: the ") and f"{folder} is in use by process {holder}" in lines[0]


def test_a_second_resume_of_a_training_run_is_refused_and_touches_nothing(tiny, tmp_path):
    run_dir = tmp_path / "run"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    first = start(*fixed, LONG, "train.checkpoint_every=20", f"hydra.run.dir={run_dir}")
    try:
        wait_for_step(run_dir, 64, first)
        second = vae("train", "--resume", str(run_dir))
        assert_refused_as_busy(second, run_dir, first.pid)
        also_new = vae("train", *fixed, "train.steps=5", f"hydra.run.dir={run_dir}")
        assert also_new.returncode == 2 and "already holds a run" in also_new.stderr
        evaluating = vae("evaluate", "-c", str(run_dir), "--k", "2", "--n", "8")  # its evaluation.json: one writer
        assert_refused_as_busy(evaluating, run_dir, first.pid)
        assert not (run_dir / "evaluation.json").exists()
    finally:
        code, _ = stop(first, signal.SIGINT)
    assert code == 130
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert not rows.duplicated(["step", "split"]).any()  # one writer: no row twice
    assert not (run_dir / lock.LOCK_FILE).exists()  # the holder's note goes with it
    before = snapshot(run_dir)
    done = vae("train", "--resume", str(run_dir), f"train.steps={saved_step(run_dir) + 20}")  # free again
    assert done.returncode == 0, done.stderr
    assert snapshot(run_dir) != before


def test_a_killed_run_leaves_no_stale_lock(tiny, tmp_path):
    run_dir = tmp_path / "run"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    first = start(*fixed, LONG, "train.checkpoint_every=20", f"hydra.run.dir={run_dir}")
    wait_for_step(run_dir, 64, first)
    first.kill()  # SIGKILL: no handler runs, the note stays, the kernel drops the lock
    first.communicate(timeout=60)
    assert (run_dir / lock.LOCK_FILE).exists()
    done = vae("train", "--resume", str(run_dir), f"train.steps={saved_step(run_dir) + 20}")
    assert done.returncode == 0, done.stderr


def test_a_second_sweep_on_one_folder_is_refused(tiny, tmp_path):
    sweep_dir = tmp_path / "sweep"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    first = subprocess.Popen(
        [*VAE, "sweep", *fixed, "train.steps=100000", "beta=0,1", f"hydra.sweep.dir={sweep_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not list(sweep_dir.glob("beta=*/metrics.csv")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.1)
        before = snapshot(sweep_dir / "beta=0")
        second = vae("sweep", *fixed, "train.steps=8", "beta=0,1", f"hydra.sweep.dir={sweep_dir}")
        assert_refused_as_busy(second, sweep_dir, first.pid)
        report = vae("sweep", "--report", str(sweep_dir))
        assert_refused_as_busy(report, sweep_dir, first.pid)
        assert set(before) <= set(snapshot(sweep_dir / "beta=0"))  # the refused ones wrote nothing there
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)


def test_a_lock_is_taken_again_by_its_own_process_and_let_go_once(tmp_path):
    lock.acquire(tmp_path, "run")
    lock.acquire(tmp_path, "run")  # the basic launcher's task inside `vae train`
    assert lock.holder(tmp_path)["pid"] > 0
    lock.release(tmp_path)
    assert lock.holds(tmp_path) and (tmp_path / lock.LOCK_FILE).exists()
    lock.release(tmp_path)
    assert not lock.holds(tmp_path) and not (tmp_path / lock.LOCK_FILE).exists()


# ----------------------------------------------------------------------------- a refused start touches nothing


def refused_resume(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    before = snapshot(run_dir)
    done = vae("train", "--resume", str(run_dir), *overrides)
    assert snapshot(run_dir) == before  # byte for byte: no result.json rewritten, no train.log line
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    return done


def finished_run(tiny, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    fixed = [item for item in tiny if not item.startswith("train.steps=")]
    done = vae("train", *fixed, "train.steps=40", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    return run_dir


def test_refused_resumes_leave_the_folder_byte_identical(tiny, tmp_path):
    run_dir = finished_run(tiny, tmp_path)
    metrics = run_dir / "metrics.csv"
    changed = refused_resume(run_dir, "train.steps=60", "beta=0.5")
    assert changed.returncode == 2 and "beta cannot change" in changed.stderr
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:3]) + lines[3][:7])  # cut inside the rows the checkpoint counts
    cut = refused_resume(run_dir, "train.steps=60")
    assert cut.returncode == 1 and "complete rows where its checkpoint counted" in cut.stderr
    fields = lines[2].split(b",")
    fields[4] = b"abc"  # the loss of the second counted row
    metrics.write_bytes(b"".join([*lines[:2], b",".join(fields), *lines[3:]]))
    damaged = refused_resume(run_dir, "train.steps=60")
    assert damaged.returncode == 1 and "a row its checkpoint counted is damaged" in damaged.stderr
    metrics.unlink()
    missing = refused_resume(run_dir, "train.steps=60")
    assert missing.returncode == 1 and "cannot be read" in missing.stderr


def test_a_cut_last_row_past_the_checkpoint_is_dropped_as_a_killed_runs_rows(tiny, tmp_path):
    run_dir = finished_run(tiny, tmp_path)
    metrics = run_dir / "metrics.csv"
    counted = metrics.read_bytes()
    metrics.write_bytes(counted + b"41,0.6,tra")  # a row a killed process was writing
    done = vae("train", "--resume", str(run_dir), "train.steps=60")
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(metrics)
    assert metrics.read_bytes().startswith(counted) and rows.step.max() == 60 and not rows.step.isna().any()
