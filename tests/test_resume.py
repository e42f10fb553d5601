"""Runs that survive: real signals to a real `vae train`, exact resume, extension, refused changes, claimed folders."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import invoke
from vaecli.runfolder import checkpoint
from vaecli.runfolder.metrics import TIMING_COLUMNS

VAE = [sys.executable, "-m", "vaecli"]
LONG = "train.steps=100000"  # never reached: these runs end by a signal
LENGTH = 300  # what the stopped runs are continued to, and the uninterrupted reference's length


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """`vae train ARGS` in a process of its own, as from a shell."""
    return subprocess.Popen([*VAE, "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_for_step(
    run_dir: Path, step: int, process: subprocess.Popen, timeout_s: float = 180, poll_s: float = 0.1
) -> None:
    """Until metrics.csv holds a row for ``step`` (the run, or a sweep member, is training past it)."""
    deadline = time.time() + timeout_s
    metrics = run_dir / "metrics.csv"
    while not (metrics.is_file() and f"\n{step}," in metrics.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{run_dir.name} never reached step {step}"
        time.sleep(poll_s)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def comparable(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=list(TIMING_COLUMNS))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir)["model"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    pd.testing.assert_frame_equal(comparable(run_dir), comparable(reference), check_exact=True)
    mine, theirs = weights(run_dir), weights(reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, runner, tiny) -> Path:
    """The uninterrupted run that every stopped-and-continued run must equal."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = invoke(runner, "train", *tiny, f"train.steps={LENGTH}", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_saves_everything_and_the_run_continues_exactly(
    runner, tiny, tmp_path, reference, signum, code
):
    run_dir = tmp_path / "run"
    process = start(*tiny, LONG, f"hydra.run.dir={run_dir}")
    wait_for_step(run_dir, 32, process)
    returncode, stderr = stop(process, signum)

    assert returncode == code, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: ") and f"vae train --resume {run_dir}" in last, stderr
    status = json.loads((run_dir / "result.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    assert 32 <= status["step"] < LENGTH
    assert checkpoint.load(run_dir)["step"] == status["step"]
    checkpoint.load_model(run_dir)  # rebuilds and loads: the pictures commands can open it
    text = (run_dir / "metrics.csv").read_text()
    assert text.endswith("\n") and pd.read_csv(run_dir / "metrics.csv").step.max() <= status["step"]
    for name in ("loss.png", "reconstructions.png", "traversal.png"):
        assert (run_dir / name).stat().st_size > 0, name

    result = invoke(runner, "train", "--resume", str(run_dir), f"train.steps={LENGTH}")
    assert result.exit_code == 0, result.output
    status = json.loads((run_dir / "result.json").read_text())
    assert status["status"] == "ok" and status["resumed_from"] > 0 and status["step"] == LENGTH
    assert_same_run(run_dir, reference)


def test_a_killed_run_continues_from_its_last_periodic_checkpoint(runner, tiny, tmp_path, reference):
    """SIGKILL leaves rows written after the last checkpoint; the continued run drops and rewrites them."""
    run_dir = tmp_path / "run"
    process = start(*tiny, LONG, "train.checkpoint_every=50", f"hydra.run.dir={run_dir}")
    wait_for_step(run_dir, 128, process)
    process.kill()
    process.communicate(timeout=60)
    saved = checkpoint.load(run_dir)["step"]
    assert saved % 50 == 0 and saved >= 100
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"

    result = invoke(runner, "train", "--resume", str(run_dir / "checkpoint.pt"), f"train.steps={LENGTH}")
    assert result.exit_code == 0, result.output
    assert f"continuing at step {saved + 1} of {LENGTH}" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, reference)


def test_a_second_ctrl_c_quits_and_keeps_the_last_checkpoint(tiny, tmp_path):
    run_dir = tmp_path / "run"
    process = start(*tiny, LONG, f"hydra.run.dir={run_dir}")
    wait_for_step(run_dir, 32, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.6)  # a person pressing again, not one Ctrl-C delivered twice
    returncode, stderr = stop(process, signal.SIGINT)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("stopped: ")
    status = json.loads((run_dir / "result.json").read_text())
    assert status["status"] == "interrupted" and checkpoint.load(run_dir)["step"] == status["step"]


def test_a_finished_run_is_extended(runner, tiny, tmp_path, reference):
    run_dir = tmp_path / "run"
    assert invoke(runner, "train", *tiny, "train.steps=200", f"hydra.run.dir={run_dir}").exit_code == 0
    first = json.loads((run_dir / "provenance.json").read_text())
    again = invoke(runner, "train", "--resume", str(run_dir))
    assert again.exit_code == 2 and "already completed its 200 steps" in again.stderr

    result = invoke(runner, "train", "--resume", str(run_dir), f"train.steps={LENGTH}")
    assert result.exit_code == 0, result.output
    metrics = comparable(run_dir)
    assert not metrics.duplicated(["step", "split"]).any()
    assert list(metrics[metrics.split == "train"].step)[-4:] == [128, 200, 256, LENGTH]
    assert weights(run_dir).keys() == weights(reference).keys()
    assert checkpoint.load(run_dir)["step"] == LENGTH
    assert "train.steps=300" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    record = json.loads((run_dir / "provenance.json").read_text())  # who started it, then who continued it
    [later] = record.pop("resumes")
    assert record == first and later["from_step"] == 200
    assert later["data"] == first["data"] and later["versions"] == first["versions"] and later["host"] == first["host"]
    shorter = invoke(runner, "train", "--resume", str(run_dir), "train.steps=100")
    assert shorter.exit_code == 2 and "cannot be shortened" in shorter.stderr


@pytest.mark.parametrize(
    "override",
    [
        "beta=0.5",
        "latent_size=3",
        "model.hidden_sizes=[50]",
        "data.limit=100",
        "data.train_on=all",
        "seed=1",
        "train.lr=0.01",
        "train.batch_size=16",
        "train.shuffle=false",
    ],
)
def test_changes_that_make_another_run_are_refused(runner, trained_run, override):
    before = (trained_run / "checkpoint.pt").stat().st_mtime_ns
    result = invoke(runner, "train", "--resume", str(trained_run), override, "train.steps=64")
    key = override.split("=")[0]
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {key} cannot change when resuming")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (trained_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_where_and_how_a_run_runs_may_be_given_again(runner, tiny, data_root, tmp_path):
    run_dir = tmp_path / "run"
    assert invoke(runner, "train", *tiny, "train.steps=16", f"hydra.run.dir={run_dir}").exit_code == 0
    place = ["threads=1", "device=cpu", "train.progress=false", f"data.root={data_root}", "train.checkpoint_every=8"]
    result = invoke(runner, "train", "--resume", str(run_dir), *place, "train.steps=24", "beta=0.01")
    assert result.exit_code == 0, result.output
    assert checkpoint.load(run_dir)["step"] == 24


def test_resume_refuses_what_is_not_a_run(runner, tmp_path):
    assert invoke(runner, "train", "--resume", str(tmp_path)).exit_code == 2
    result = invoke(runner, "train", "--resume", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "early" / ".hydra").mkdir(parents=True)  # a run killed before its first checkpoint
    result = invoke(runner, "train", "--resume", str(tmp_path / "early"))
    assert result.exit_code == 2 and "holds no checkpoint" in result.stderr


def test_an_occupied_run_folder_is_refused_untouched(runner, tiny, trained_run):
    files = {path: path.stat().st_mtime_ns for path in trained_run.rglob("*")}
    result = invoke(runner, "train", *tiny, f"hydra.run.dir={trained_run}")
    assert result.exit_code == 2
    assert "already holds a run" in result.stderr and f"vae train --resume {trained_run}" in result.stderr
    assert {path: path.stat().st_mtime_ns for path in trained_run.rglob("*")} == files


def test_two_runs_started_together_get_two_folders(tiny, tmp_path):
    processes = {seed: start(*tiny, "train.steps=16", f"seed={seed}", cwd=tmp_path) for seed in (1, 2)}
    for process in processes.values():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    folders = sorted(path.parent for path in (tmp_path / "outputs").rglob("result.json"))
    assert len(folders) == 2
    seeds = set()
    for folder in folders:
        config = checkpoint.load(folder)["config"]
        assert f"seed: {config['seed']}" in (folder / ".hydra" / "config.yaml").read_text()
        assert pd.read_csv(folder / "metrics.csv").step.is_monotonic_increasing
        seeds.add(config["seed"])
    assert seeds == {1, 2}


def test_claiming_is_atomic_among_processes(tmp_path):
    """Eight processes claim the same folder name at once: eight different folders."""
    code = (
        "import sys; from pathlib import Path; from vaecli.runfolder.files import claim_fresh; "
        "print(claim_fresh(Path(sys.argv[1])))"
    )
    base = tmp_path / "outputs" / "12-00-00"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(base)], stdout=subprocess.PIPE, text=True) for _ in range(8)
    ]
    claimed = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert len(set(claimed)) == 8 and all(os.path.isdir(Path(path) / ".hydra") for path in claimed)


def test_checkpoint_interval_is_checked():
    from vaecli.config.hydra_bridge import compose
    from vaecli.errors import UsageError

    assert compose([]).train.checkpoint_every is None  # automatic: about every minute of training
    with pytest.raises(UsageError, match="train.checkpoint_every=-1 is not allowed"):
        compose(["train.checkpoint_every=-1"])
