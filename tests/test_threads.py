"""threads=0: the thread count that runs the step fastest now, kept for the run's life."""

from __future__ import annotations

import time

import pandas as pd
import torch

from tests.conftest import invoke
from vaecli.config.runtime import fastest_threads, thread_candidates, usable_cpus
from vaecli.runfolder import checkpoint

TIMED = ["images_per_s", "seconds", "eval_seconds"]


def test_the_fastest_count_is_chosen_and_torch_left_as_found():
    """A step that is slow at 2 threads and fast at 1, as on a machine with one busy core."""
    before = torch.get_num_threads()

    def work() -> None:
        time.sleep(0.004 if torch.get_num_threads() > 1 else 0.001)

    assert fastest_threads(work, 2)[0] == 1
    assert fastest_threads(lambda: time.sleep(0.004 if torch.get_num_threads() == 1 else 0.001), 4)[0] in (2, 4)
    assert fastest_threads(work, 1) == (1, {})  # one CPU: nothing to time
    assert torch.get_num_threads() == before
    assert thread_candidates(2) == [1, 2] and thread_candidates(6) == [1, 2, 4, 6]


def metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMED, errors="ignore")


def test_automatic_threads_change_no_number_and_survive_a_resume(runner, tiny, tmp_path):
    """The probe draws no random number and moves no weight: a threads=0 run equals a run at the count
    it chose; continuing it keeps that count (another would change the sums' order)."""
    auto = [item for item in tiny if not item.startswith("threads=")] + ["threads=0"]
    first = tmp_path / "auto"
    assert invoke(runner, "train", *auto, f"hydra.run.dir={first}").exit_code == 0
    chosen = checkpoint.load(first)["training"]["threads"]
    assert 1 <= chosen <= usable_cpus()
    timed = "threads=0 chose" in (first / "train.log").read_text()  # only where more than one count was possible
    if timed:
        assert f"threads=0 chose {chosen} thread(s)" in (first / "train.log").read_text()

    fixed = tmp_path / "fixed"
    plain = [item for item in tiny if not item.startswith("threads=")] + [f"threads={chosen}"]
    assert invoke(runner, "train", *plain, f"hydra.run.dir={fixed}").exit_code == 0
    pd.testing.assert_frame_equal(metrics(first), metrics(fixed))

    assert invoke(runner, "train", "--resume", str(first), "train.steps=16").exit_code == 0
    log = (first / "train.log").read_text()
    assert log.count("threads=0 chose") == (1 if timed else 0)  # not timed again on resume
    assert f"(cpu, {chosen} threads)" in log.split("continuing at step 9")[1].splitlines()[0]
    assert checkpoint.load(first)["training"]["threads"] == chosen
