"""`vae sweep ... hydra/launcher=batched` on a small real slice: every member an ordinary run.

Files, the solo equivalence of a group of one, a plain checkpoint for a padded member that every
inspection command opens, failure isolation, interruption, --report and resume.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import invoke
from tests.test_resume import wait_for_step
from vaecli.runfolder import checkpoint
from vaecli.runfolder import files as run_folder
from vaecli.runfolder.metrics import TIMING_COLUMNS
from vaecli.sweep.command import group_progress
from vaecli.sweep.file_helpers import FileHelpers, fork_helper, reap

GRID = ["beta=0,0.5", "latent_size=2,10"]
MEMBERS = {"beta=0,latent_size=2", "beta=0,latent_size=10", "beta=0.5,latent_size=2", "beta=0.5,latent_size=10"}
BATCHED = "hydra/launcher=batched"
RUN_FILES = [
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    ".hydra/hydra.yaml",
    "provenance.json",
    "train.log",
    "metrics.csv",
    "loss.png",
    "reconstructions.png",
    "traversal.png",
    "checkpoint.pt",
    "result.json",
]
TERMS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")


def sweep(runner, tiny, sweep_dir, *overrides):
    return invoke(runner, "sweep", *tiny, *overrides, BATCHED, f"hydra.sweep.dir={sweep_dir}")


def result_of(member: Path) -> dict:
    return json.loads((member / "result.json").read_text())


@pytest.fixture(scope="module")
def batched_sweep(tmp_path_factory, runner, tiny):
    """The grid as one group, with two threads: one forked helper writes half of the members' files."""
    sweep_dir = tmp_path_factory.mktemp("batched") / "sweep"
    two_threads = [item for item in tiny if not item.startswith("threads=")] + ["threads=2"]
    result = sweep(runner, two_threads, sweep_dir, *GRID)
    assert result.exit_code == 0, result.output
    return sweep_dir, result


def test_every_member_is_an_ordinary_run(batched_sweep):
    sweep_dir, result = batched_sweep
    assert {path.name for path in run_folder.member_dirs(sweep_dir)} == MEMBERS
    for member in MEMBERS:
        for name in RUN_FILES:
            assert (sweep_dir / member / name).is_file(), (member, name)
        log = (sweep_dir / member / "train.log").read_text()
        assert "config:" in log and "stacked with 3 other sweep members" in log and "step 8:" in log
        assert log.rstrip().endswith(f"wrote {sweep_dir / member}")
        assert result_of(sweep_dir / member)["status"] == "ok"
        origin = json.loads((sweep_dir / member / "provenance.json").read_text())
        assert origin["command"] == sys.argv and origin["device"] == "cpu"
        assert origin["threads"] == 2 and [file["md5"] for file in origin["data"]["files"]]
    assert "BatchedLauncher" in (sweep_dir / "multirun.yaml").read_text()
    [group] = run_folder.read_groups(sweep_dir)
    assert set(group["members"]) == MEMBERS and group["state"] == "done" and group["step"] == group["steps"] == 8
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4 and set(table.status) == {"ok"} and table.test_neg_elbo_nats.notna().all()
    assert (table.torch_version == metadata.version("torch")).all()  # from the members' provenance.json
    assert "4 members" in result.stdout and "through the batched launcher" in result.stderr


def test_on_a_gpu_the_helpers_draw_the_loss_plots_and_this_process_the_rest(batched_sweep, runner, tiny, tmp_path):
    """A GPU's context does not survive a fork, so there the helpers get only loss.png (from the rows).
    Run here on the CPU with that split forced: the members must come out as with whole-member helpers."""
    from vaecli.sweep.batched import members as stacked_run

    sweep_dir = tmp_path / "sweep"
    two_threads = [item for item in tiny if not item.startswith("threads=")] + ["threads=2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacked_run, "helpers_may_use_the_model", lambda device: False)
        result = sweep(runner, two_threads, sweep_dir, *GRID)
    assert result.exit_code == 0, result.output
    reference, _ = batched_sweep
    for member in MEMBERS:
        for name in RUN_FILES:
            assert (sweep_dir / member / name).is_file(), (member, name)
        assert result_of(sweep_dir / member)["status"] == "ok"
        ours, theirs = (pd.read_csv(where / member / "metrics.csv") for where in (sweep_dir, reference))
        timing = list(TIMING_COLUMNS)
        pd.testing.assert_frame_equal(ours.drop(columns=timing), theirs.drop(columns=timing))
        with Image.open(sweep_dir / member / "loss.png") as drawn, Image.open(reference / member / "loss.png") as other:
            assert drawn.size == other.size


def test_a_padded_member_checkpoint_is_a_plain_model_of_its_own_size(batched_sweep):
    """latent_size=2 trained in a group padded to 10: a plain latent_size=2 VAE, optimizer and position."""
    file = batched_sweep[0] / "beta=0.5,latent_size=2" / "checkpoint.pt"
    loaded = checkpoint.load_model(file, device="cpu")
    assert loaded.model.latent_size == 2 and loaded.config.latent_size == 2
    state = loaded.model.state_dict()
    assert state["encoder.head.weight"].shape == (4, 100) and state["decoder.body.0.weight"].shape == (100, 2)
    payload = checkpoint.load(file)
    optimizer = torch.optim.Adam(loaded.model.parameters())
    optimizer.load_state_dict(payload["optimizer"])  # a plain Adam over the plain model's parameters
    assert payload["step"] == 8 and payload["training"]["position"]["step"] == 8
    assert set(payload["rng"]) == {"torch", "shuffle"}


@pytest.mark.parametrize(
    "command",
    [
        ["reconstruct"],
        ["traverse"],
        ["traverse", "--mode", "map", "--steps", "4"],
        ["sample", "--n", "3"],
        ["interpolate", "--steps", "4"],
        ["embed", "--n", "200"],
    ],
)
def test_inspection_commands_open_a_batched_member(batched_sweep, runner, tmp_path, command):
    member = batched_sweep[0] / "beta=0.5,latent_size=2"
    out = tmp_path / f"{command[0]}.png"
    result = invoke(runner, command[0], "-c", str(member), *command[1:], "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 500


def test_a_group_of_one_reproduces_vae_train(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "ones"
    result = sweep(runner, tiny, sweep_dir, "beta=0,0.5", "latent_size=3", "hydra.launcher.max_group=1")
    assert result.exit_code == 0, result.output
    assert [group["members"] for group in run_folder.read_groups(sweep_dir)] == [["beta=0"], ["beta=0.5"]]
    solo_dir = tmp_path / "solo"
    assert invoke(runner, "train", *tiny, "beta=0.5", "latent_size=3", f"hydra.run.dir={solo_dir}").exit_code == 0
    member = sweep_dir / "beta=0.5"
    mine, theirs = pd.read_csv(member / "metrics.csv"), pd.read_csv(solo_dir / "metrics.csv")
    assert list(mine.columns) == list(theirs.columns)
    assert mine[["step", "split", "epoch"]].equals(theirs[["step", "split", "epoch"]])
    for column in TERMS:
        assert mine[column].to_numpy() == pytest.approx(theirs[column].to_numpy(), rel=1e-5), column
    ours, alone = checkpoint.load(member / "checkpoint.pt"), checkpoint.load(solo_dir / "checkpoint.pt")
    assert ours["config"] == alone["config"] and ours["step"] == alone["step"]
    for name, value in alone["model"].items():
        torch.testing.assert_close(ours["model"][name], value, rtol=0, atol=1e-5)
    for stream in ("torch", "shuffle"):  # the noise and batch order a continued run would draw next
        assert torch.equal(ours["rng"][stream], alone["rng"][stream]), stream
    solo_result = result_of(solo_dir)
    assert set(result_of(member)) == set(solo_result) and result_of(member)["config_hash"] == solo_result["config_hash"]


def test_a_diverging_member_fails_alone_while_the_others_finish(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "nan"
    result = sweep(runner, tiny, sweep_dir, "train.lr=1e-3,1e6", "beta=0,0.5")
    assert result.exit_code == 1
    groups = run_folder.read_groups(sweep_dir)
    assert len(groups) == 2  # train.lr is a grouping key
    table = pd.read_csv(sweep_dir / "sweep.csv")
    failed, done = table[table["train.lr"] == 1e6], table[table["train.lr"] == 1e-3]
    assert set(failed.status) == {"failed"} and set(done.status) == {"ok"}
    as_alone = r"TrainingDiverged: training diverged at the update of step \d+ \(the (forward pass|test evaluation)"
    assert failed.error.str.match(as_alone).all()  # worded as its solo run words it (tests/test_honest_figures.py)
    for member in failed.member:
        assert not (sweep_dir / member / "checkpoint.pt").exists()  # as a solo run that diverged
        assert "run failed: TrainingDiverged" in (sweep_dir / member / "train.log").read_text()
    assert all((sweep_dir / member / "checkpoint.pt").is_file() for member in done.member)
    assert "2 of 4 members failed" in result.stderr


def test_report_and_resume_on_a_batched_sweep_folder(batched_sweep, runner, tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(batched_sweep[0], copy)
    (copy / "sweep.csv").unlink()
    report = invoke(runner, "sweep", "--report", str(copy))
    assert report.exit_code == 0, report.output
    assert set(pd.read_csv(copy / "sweep.csv").status) == {"ok"}

    done, broken, gone = copy / "beta=0,latent_size=2", copy / "beta=0.5,latent_size=10", copy / "beta=0,latent_size=10"
    kept_stamp = (done / "checkpoint.pt").stat().st_mtime_ns
    (broken / "result.json").write_text(json.dumps({"status": "failed", "error": "simulated"}))
    shutil.rmtree(gone)
    result = sweep(runner, tiny, copy, *GRID)
    assert result.exit_code == 0, result.output
    assert (done / "checkpoint.pt").stat().st_mtime_ns == kept_stamp
    assert "already completed with this config; skipped" in (done / "train.log").read_text()
    [group] = run_folder.read_groups(copy)
    assert sorted(group["members"]) == sorted([broken.name, gone.name])  # only the two that needed it
    assert result_of(broken)["status"] == result_of(gone)["status"] == "ok"
    assert set(pd.read_csv(copy / "sweep.csv").status) == {"ok"}


def start_sweep(tiny: list[str], sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """A real `vae sweep ... hydra/launcher=batched` in a process of its own, as from a shell."""
    command = [sys.executable, "-m", "vaecli", "sweep", *tiny, *overrides, BATCHED, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_row(member: Path, step: int, process: subprocess.Popen) -> None:
    """Until the member's metrics.csv holds a row for ``step``, polled often: a stacked group trains fast."""
    wait_for_step(member, step, process, poll_s=0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_records_every_unfinished_member(tiny, tmp_path, signum):
    """As a solo member stopped by a signal: its checkpoint, result.json "interrupted", sweep.csv, 128 + signal."""
    sweep_dir = tmp_path / "stopped"
    process = start_sweep(tiny, sweep_dir, "train.steps=20000", "beta=0,0.5")
    wait_for_row(sweep_dir / "beta=0", 32, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr  # as every sweep stopped by a signal
    assert "continue it with: vae sweep" in stderr and f"hydra.sweep.dir={sweep_dir}" in stderr
    name = signal.Signals(signum).name
    for member in ("beta=0", "beta=0.5"):
        result = result_of(sweep_dir / member)
        step = checkpoint.load(sweep_dir / member / "checkpoint.pt")["step"]
        assert 32 <= step < 20000
        assert result["status"] == "interrupted" and result["step"] == step and result["steps"] == 20000
        assert result["signal"] == name and result["resume"] == f"vae train --resume {sweep_dir / member}"
        assert pd.read_csv(sweep_dir / member / "metrics.csv").step.max() <= step
        log = (sweep_dir / member / "train.log").read_text()
        assert f"stopped by {name} at step {step}; vae train --resume {sweep_dir / member}" in log
        for figure in ("loss.png", "reconstructions.png", "traversal.png"):
            assert (sweep_dir / member / figure).stat().st_size > 0, figure
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert set(table.status) == {"interrupted"} and (table.step >= 32).all()
    assert run_folder.read_groups(sweep_dir)[0]["state"] == "stopped"


LENGTH = 400  # the stopped sweeps' length: they stop near step 32 or 128 and are continued to it
RESUME_GRID = ["train.lr=0.001,0.002", "latent_size=2,5"]  # two groups of two (lr splits), latent 2 padded to 5
FIRST = ("latent_size=2,train.lr=0.001", "latent_size=5,train.lr=0.001")  # the group that completes
SECOND = ("latent_size=2,train.lr=0.002", "latent_size=5,train.lr=0.002")  # the group that is stopped


def resumable(tiny: list[str], *overrides: str) -> list[str]:
    return [*(item for item in tiny if not item.startswith("train.steps=")), f"train.steps={LENGTH}", *overrides]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, runner, tiny) -> Path:
    """The grid batched without a stop: what every stopped-and-continued member must equal."""
    sweep_dir = tmp_path_factory.mktemp("uninterrupted") / "sweep"
    result = sweep(runner, resumable(tiny), sweep_dir, *RESUME_GRID)
    assert result.exit_code == 0, result.output
    return sweep_dir


def assert_same_member(member: Path, reference: Path) -> None:
    """metrics.csv (timing aside) and the final weights, exactly."""
    mine, theirs = (
        pd.read_csv(path / "metrics.csv").drop(columns=list(TIMING_COLUMNS)) for path in (member, reference)
    )
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    mine, theirs = checkpoint.load(member)["model"], checkpoint.load(reference)["model"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine), member.name


def assert_continued(sweep_dir: Path, reference: Path, stopped_at: dict[str, int], done: dict[str, int]) -> None:
    """Completed members skipped (their checkpoints untouched), the others continued to the reference's result."""
    assert set(pd.read_csv(sweep_dir / "sweep.csv").status) == {"ok"}
    [group] = run_folder.read_groups(sweep_dir)
    assert sorted(group["members"]) == sorted(stopped_at)  # only the stopped group trained again
    for member, stamp in done.items():
        assert (sweep_dir / member / "checkpoint.pt").stat().st_mtime_ns == stamp
        assert "already completed with this config; skipped" in (sweep_dir / member / "train.log").read_text()
    for member, step in stopped_at.items():
        result = result_of(sweep_dir / member)
        assert result["status"] == "ok" and result["resumed_from"] == step and result["step"] == LENGTH
        log = (sweep_dir / member / "train.log").read_text()
        assert f"continuing at step {step + 1} of {LENGTH} on" in log
    for member in (*FIRST, *SECOND):
        assert_same_member(sweep_dir / member, reference / member)


def test_a_stopped_batched_sweep_continues_to_the_uninterrupted_result(runner, tiny, tmp_path, uninterrupted):
    sweep_dir = tmp_path / "sweep"
    process = start_sweep(resumable(tiny), sweep_dir, *RESUME_GRID)
    wait_for_row(sweep_dir / SECOND[0], 32, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    stopped_at = {member: result_of(sweep_dir / member)["step"] for member in SECOND}
    assert {result_of(sweep_dir / member)["status"] for member in SECOND} == {"interrupted"}
    assert all(32 <= step < LENGTH for step in stopped_at.values())
    done = {member: (sweep_dir / member / "checkpoint.pt").stat().st_mtime_ns for member in FIRST}

    again = sweep(runner, resumable(tiny), sweep_dir, *RESUME_GRID)
    assert again.exit_code == 0, again.output
    assert_continued(sweep_dir, uninterrupted, stopped_at, done)


def test_a_killed_batched_sweep_continues_from_its_periodic_checkpoints(runner, tiny, tmp_path, uninterrupted):
    """SIGKILL: each member's last checkpoint on the way (train.checkpoint_every=50) is where it continues."""
    sweep_dir, every = tmp_path / "sweep", "train.checkpoint_every=50"
    process = start_sweep(resumable(tiny, every), sweep_dir, *RESUME_GRID)
    wait_for_row(sweep_dir / SECOND[0], 128, process)
    process.kill()
    process.communicate(timeout=60)
    saved = {member: checkpoint.load(sweep_dir / member)["step"] for member in SECOND}
    assert all(step % 50 == 0 and 100 <= step < LENGTH for step in saved.values()), saved
    assert {result_of(sweep_dir / member)["status"] for member in SECOND} == {"running"}
    done = {member: (sweep_dir / member / "checkpoint.pt").stat().st_mtime_ns for member in FIRST}

    again = sweep(runner, resumable(tiny, every), sweep_dir, *RESUME_GRID)
    assert again.exit_code == 0, again.output
    assert_continued(sweep_dir, uninterrupted, saved, done)


def test_file_helpers_share_the_members_and_failures_fall_back_here(tmp_path):
    parent = os.getpid()

    def write(i: int) -> int:
        if i == 4 and os.getpid() != parent:
            raise RuntimeError("a helper fails on member 4")
        time.sleep(0.2)
        (tmp_path / f"{i}-{os.getpid()}").write_text("")
        return i

    helpers = FileHelpers(write, [0, 1, 2, 3, 4, 5], workers=2)
    assert helpers.written_here == {0: 0}  # written here before forking: plotnine is warm in the helpers
    for i in range(6):
        if not helpers.written(i):  # this process's to write: free, or failed in a helper
            write(i)
    helpers.close()
    writers = {int(path.name.split("-")[0]): int(path.name.split("-")[1]) for path in tmp_path.iterdir()}
    assert sorted(writers) == [0, 1, 2, 3, 4, 5] and len(list(tmp_path.iterdir())) == 6  # each member once
    assert writers[0] == parent and writers[4] == parent  # the first, and the one a helper failed on
    assert {writers[i] for i in (2, 3, 5)} - {parent}  # the helpers took members from the back
    assert not FileHelpers(write, [0, 1], workers=0).written(0)


def test_a_hanging_helper_is_stopped(tmp_path):
    pid = fork_helper(lambda i: time.sleep(60), [0], multiprocessing.Array("b", 1))
    started = time.monotonic()
    assert not reap(pid, timeout=0.5) and time.monotonic() - started < 10


def test_the_progress_line_names_the_running_group(tmp_path):
    assert group_progress(tmp_path) == ("", 0.0)
    groups = [
        {"members": ["a", "b"], "state": "done", "step": 8, "steps": 8},
        {"members": ["c", "d", "e"], "state": "running", "step": 256, "steps": 1024},
    ]
    run_folder.write_groups(tmp_path, groups)
    assert group_progress(tmp_path) == ("group 2 of 2 (3 members) at step 256/1024", 0.25)
    groups[1]["state"] = "done"
    run_folder.write_groups(tmp_path, groups)
    assert group_progress(tmp_path) == ("2 of 2 groups done", 0.0)


def test_max_group_below_one_is_refused_before_anything_runs(runner, tmp_path):
    result = invoke(
        runner, "sweep", "beta=0,1", BATCHED, "hydra.launcher.max_group=0", f"hydra.sweep.dir={tmp_path / 's'}"
    )
    assert result.exit_code == 2 and "hydra.launcher.max_group=0 is not allowed" in result.stderr
    assert not (tmp_path / "s").exists()
