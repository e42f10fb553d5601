"""TensorBoard events written by vaecli (``logger=tensorboard``), read back with TensorBoard's own event readers."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams.api_pb2 import Status  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

from tests.conftest import fail_at_step, invoke, vae_without  # noqa: E402
from tests.test_resume import start, stop, wait_for_step  # noqa: E402
from vaecli.inspect import images  # noqa: E402
from vaecli.run.tensorboard_log import SCALAR_KEYS, TensorBoardLog, flatten, scalar_tags  # noqa: E402
from vaecli.runfolder import checkpoint
from vaecli.runfolder.files import TB_DIR  # noqa: E402
from vaecli.runfolder.metrics import TIMING_COLUMNS  # noqa: E402

CONFIG = {
    "beta": 0.01,
    "latent_size": 10,
    "model": {"hidden_sizes": [100, 100], "min_scale": 0.0001},
    "train": {"steps": 4, "epochs": None, "shuffle": True},
    "data": {"name": "mnist"},
}


def train_row(step: int, loss: float) -> dict:
    return {
        "step": step,
        "epoch": step / 10,
        "split": "train",
        "loss": loss,
        "reconstruction": loss * 0.9,
        "kl": loss * 10,
        "recon_nats": 100.0 / step,
        "kl_nats": 5.0 + step,
        "neg_elbo_nats": 100.0 / step + 5.0 + step,
        "images_per_s": 1000.0 * step,
        "seconds": 0.1 * step,
    }


def eval_row(step: int) -> dict:
    row = {**train_row(step, 0.2), "split": "test"}
    row["images_per_s"] = ""  # test rows have a blank images/s cell, as in metrics.csv
    return row


def accumulator(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def plugin_data(events: EventAccumulator, tag: str) -> HParamsPluginData:
    return HParamsPluginData.FromString(events.PluginTagToContent("hparams")[tag])


def write_run(run_dir: Path, status: str = "ok", beta: float = 0.01) -> None:
    with TensorBoardLog(run_dir) as tb:
        for step, loss in ((1, 0.7), (2, 0.5), (4, 0.3)):
            tb.metrics(train_row(step, loss))
        for step in (1, 4):
            tb.metrics(eval_row(step))
        tb.image("images/reconstructions", images.grid_tensor(torch.rand(16, 784), columns=8), 4)
        tb.image("images/traversal", images.grid_tensor(torch.rand(100, 784), columns=10), 4)
        final = {"train": train_row(4, 0.3), "test": eval_row(4)}
        tb.hparams({**CONFIG, "beta": beta}, final, step=4, status=status)


def test_scalars_have_split_tags_and_the_rows_steps(tmp_path: Path):
    write_run(tmp_path)
    events = accumulator(tmp_path / TB_DIR)

    scalars = set(events.Tags()["scalars"])
    keys = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats", "seconds")
    assert {f"train/{key}" for key in keys} | {"train/images_per_s"} <= scalars
    assert {f"test/{key}" for key in keys} <= scalars
    assert "test/images_per_s" not in scalars  # blank cells are not written as zeros
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, pytest.approx(0.7)),
        (2, pytest.approx(0.5)),
        (4, pytest.approx(0.3)),
    ]
    assert [e.step for e in events.Scalars("test/neg_elbo_nats")] == [1, 4]
    assert [e.value for e in events.Scalars("train/images_per_s")] == [1000.0, 2000.0, 4000.0]


def test_images_are_the_grids_at_their_step(tmp_path: Path):
    write_run(tmp_path)
    events = accumulator(tmp_path / TB_DIR)

    assert set(events.Tags()["images"]) == {"images/reconstructions", "images/traversal"}
    (picture,) = events.Images("images/traversal")
    assert picture.step == 4
    assert (picture.height, picture.width) == images.grid_size(10, 10)
    assert picture.encoded_image_string.startswith(b"\x89PNG")


def test_hparams_hold_the_flat_config_and_the_final_metric_tags(tmp_path: Path):
    write_run(tmp_path)
    events = accumulator(tmp_path / TB_DIR)

    start = plugin_data(events, "_hparams_/session_start_info").session_start_info
    assert start.hparams["beta"].number_value == pytest.approx(0.01)
    assert start.hparams["latent_size"].number_value == 10
    assert start.hparams["model.hidden_sizes"].string_value == "[100, 100]"
    assert start.hparams["train.epochs"].string_value == "null"
    assert start.hparams["train.shuffle"].string_value == "true"
    assert start.hparams["data.name"].string_value == "mnist"

    # no experiment summary: TensorBoard builds it from all members' sessions (see TensorBoardLog.hparams)
    assert "_hparams_/experiment" not in events.PluginTagToContent("hparams")
    end = plugin_data(events, "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_SUCCESS")
    # the metric columns read the curves' last values: the final test row at step 4
    assert events.Scalars("test/neg_elbo_nats")[-1].step == 4


def test_a_failed_run_is_a_failed_session(tmp_path: Path):
    write_run(tmp_path, status="failed")
    end = plugin_data(accumulator(tmp_path / TB_DIR), "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_FAILURE")


def test_a_continued_run_trims_what_came_after_its_checkpoint_and_the_earlier_session(tmp_path: Path):
    """A killed process wrote steps 5-8 past its checkpoint at 4; the continuing one writes 5 and 6 anew."""
    with TensorBoardLog(tmp_path) as tb:
        for step in range(1, 9):
            tb.metrics(train_row(step, 1.0))
        for step in (4, 8):
            tb.image("images/traversal", images.grid_tensor(torch.rand(100, 784), columns=10), step)
        tb.hparams(CONFIG, {"train": train_row(8, 1.0)}, step=8, status="interrupted")
    with TensorBoardLog(tmp_path, resumed_from=4) as tb:
        for step in (5, 6):
            tb.metrics(train_row(step, 0.5))
        tb.hparams({**CONFIG, "beta": 0.5}, {"train": train_row(6, 0.5)}, step=6)

    log_dir = tmp_path / TB_DIR
    assert len(list(log_dir.iterdir())) == 2  # both processes' files, no temporary left beside them
    events = accumulator(log_dir)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, 1.0) for s in range(1, 5)] + [
        (5, 0.5),
        (6, 0.5),
    ]
    assert [picture.step for picture in events.Images("images/traversal")] == [4]
    start = plugin_data(events, "_hparams_/session_start_info").session_start_info
    assert start.hparams["beta"].number_value == 0.5  # the continued run's session, not the earlier one
    end = plugin_data(events, "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_SUCCESS")


def test_final_metrics_never_logged_as_curves_are_written_for_the_table(tmp_path: Path):
    with TensorBoardLog(tmp_path) as tb:
        tb.hparams(CONFIG, {"test": eval_row(8)}, step=8)
    events = accumulator(tmp_path / TB_DIR)
    assert [(e.step, e.value) for e in events.Scalars("test/neg_elbo_nats")] == [(8, 25.5)]


def test_each_sweep_member_is_one_tensorboard_run_with_its_hparams(tmp_path: Path):
    for name, beta in (("beta=0.01", 0.01), ("beta=0.1", 0.1)):
        write_run(tmp_path / name, beta=beta)
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    runs.Reload()

    sessions = runs.PluginRunToTagToContent("hparams")
    assert set(sessions) == {f"beta=0.01/{TB_DIR}", f"beta=0.1/{TB_DIR}"}  # no timestamped sub-runs
    betas = {
        run: HParamsPluginData.FromString(tags["_hparams_/session_start_info"]).session_start_info.hparams["beta"]
        for run, tags in sessions.items()
    }
    assert sorted(value.number_value for value in betas.values()) == [pytest.approx(0.01), pytest.approx(0.1)]


def test_scalar_tags_and_flatten():
    assert scalar_tags({"step": 2, "split": "test", "loss": 1, "images_per_s": "", "kl": True}) == {"test/loss": 1.0}
    assert flatten({"a": {"b": [1, 2], "c": None}, "d": False, "e": 1.5, "f": "x"}) == {
        "a.b": "[1, 2]",
        "a.c": "null",
        "d": "false",
        "e": 1.5,
        "f": "x",
    }


def test_tensorboard_shows_one_table_row_per_member_with_swept_keys_first(tmp_path: Path):
    """The real TensorBoard server on a sweep folder, asked what its HParams table shows."""
    write_run(tmp_path / "beta=0.01", beta=0.01)
    write_run(tmp_path / "beta=0.1", beta=0.1, status="failed")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--port", "0"]
    log = tmp_path / "tensorboard.log"
    server = subprocess.Popen([*command, "--host", "127.0.0.1"], stderr=log.open("w"))
    try:
        url = server_url(log, server)
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        query = {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 10}
        groups = post(f"{url}/data/plugin/hparams/session_groups", query)["sessionGroups"]
        experiment = post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = {group["name"]: group for group in groups}
    assert set(rows) == {f"beta=0.01/{TB_DIR}", f"beta=0.1/{TB_DIR}"}
    assert rows[f"beta=0.1/{TB_DIR}"]["sessions"][0]["status"] == "STATUS_FAILURE"
    final = {m["name"]["tag"]: m["value"] for m in rows[f"beta=0.01/{TB_DIR}"]["metricValues"]}
    assert final["test/neg_elbo_nats"] == pytest.approx(eval_row(4)["neg_elbo_nats"])
    hparams = experiment["hparamInfos"]
    assert hparams[0]["name"] == "beta" and hparams[0]["differs"]  # the swept key leads the table
    assert not any(info["differs"] for info in hparams[1:])


def server_url(log: Path, server: subprocess.Popen, timeout_s: float = 90) -> str:
    """The address TensorBoard prints once it serves: "TensorBoard 2.x at http://127.0.0.1:PORT/ ..."."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        found = re.search(r" at (http://\S+?)/? ", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    pytest.fail(f"tensorboard did not start: {log.read_text()[-2000:]}")


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# ----------------------------------------------------------------------------- through `vae train` and `vae sweep`


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, runner, tiny) -> Path:
    """The same run as conftest's ``trained_run`` (40 steps), with ``logger=tensorboard``."""
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    result = invoke(runner, "train", *tiny, "train.steps=40", "logger=tensorboard", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


def test_vae_train_writes_every_metrics_row_as_scalars(tb_run: Path):
    metrics = pd.read_csv(tb_run / "metrics.csv")
    events = accumulator(tb_run / TB_DIR)
    written = set(events.Tags()["scalars"])
    assert written == {f"{split}/{key}" for split in ("train", "test") for key in SCALAR_KEYS} - {"test/images_per_s"}
    for (split,), rows in metrics.groupby(["split"]):
        for key in SCALAR_KEYS:
            expected = [
                (step, pytest.approx(value, rel=1e-6)) for step, value in zip(rows.step, rows[key]) if value == value
            ]
            got = [(event.step, event.value) for event in events.Scalars(f"{split}/{key}")] if expected else []
            assert got == expected, f"{split}/{key}"
    assert [event.step for event in events.Scalars("test/neg_elbo_nats")] == [1, 4, 16, 40]


def test_vae_train_draws_the_run_pictures_at_each_test_evaluation(tb_run: Path):
    events = accumulator(tb_run / TB_DIR)
    for tag, name in (("images/reconstructions", "reconstructions.png"), ("images/traversal", "traversal.png")):
        pictures = events.Images(tag)
        assert [picture.step for picture in pictures] == [1, 4, 16, 40]
        last = np.asarray(Image.open(io.BytesIO(pictures[-1].encoded_image_string)).convert("RGB"), dtype=int)
        drawn = np.asarray(Image.open(tb_run / name).convert("RGB"), dtype=int)
        assert last.shape == drawn.shape and np.abs(last - drawn).max() <= 1  # the run's PNG (rounding aside)


def test_vae_train_records_its_config_and_final_metrics_as_hparams(tb_run: Path):
    events = accumulator(tb_run / TB_DIR)
    start = plugin_data(events, "_hparams_/session_start_info").session_start_info
    assert start.hparams["beta"].number_value == pytest.approx(0.01)
    assert start.hparams["train.steps"].number_value == 40
    assert not {"logger.name", "data.root", "device", "threads", "train.progress"} & set(
        start.hparams
    )  # not the model's
    assert start.hparams["model.hidden_sizes"].string_value == "[100, 100]"
    end = plugin_data(events, "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_SUCCESS")
    final = json.loads((tb_run / "result.json").read_text())["final"]["test"]["neg_elbo_nats"]
    assert events.Scalars("test/neg_elbo_nats")[-1].value == pytest.approx(final, rel=1e-6)


def test_the_logger_changes_no_result(tb_run: Path, trained_run: Path):
    with_events, without = (
        pd.read_csv(run / "metrics.csv").drop(columns=list(TIMING_COLUMNS)) for run in (tb_run, trained_run)
    )
    pd.testing.assert_frame_equal(with_events, without)
    assert not (trained_run / TB_DIR).exists()  # logger=csv, the default, writes no events


def test_a_failed_run_is_a_failed_hparams_session(runner, tiny, tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "run"
    fail_at_step(monkeypatch, 5)
    result = invoke(runner, "train", *tiny, "logger=tensorboard", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 1
    events = accumulator(run_dir / TB_DIR)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 4]
    assert plugin_data(events, "_hparams_/session_start_info").session_start_info.hparams["beta"].number_value > 0
    end = plugin_data(events, "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_FAILURE")


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweep_gives_one_tensorboard_run_and_hparams_row_per_member(runner, tiny, tmp_path: Path, launcher: str):
    sweep_dir = tmp_path / "sweep"
    overrides = ["beta=0,0.5", "logger=tensorboard", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]
    result = invoke(runner, "sweep", *tiny, *overrides)
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {sweep_dir}" in result.stderr.replace("\n", "")
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    runs.Reload()
    sessions = runs.PluginRunToTagToContent("hparams")
    assert set(sessions) == {f"beta=0/{TB_DIR}", f"beta=0.5/{TB_DIR}"}
    for run, tags in sessions.items():
        start = HParamsPluginData.FromString(tags["_hparams_/session_start_info"]).session_start_info
        assert f"beta={start.hparams['beta'].number_value:g}/{TB_DIR}" == run
        events = accumulator(sweep_dir / run)
        assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 4, 8]
        assert [picture.step for picture in events.Images("images/traversal")] == [1, 4, 8]  # test evaluations


@pytest.mark.parametrize("command", [["train"], ["sweep", "beta=0,1"]])
def test_missing_tensorboard_is_one_line_and_no_folder(tmp_path: Path, command: list[str]):
    done = vae_without("tensorboard", *command, "logger=tensorboard", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: logger=tensorboard needs tensorboard, which is not installed: pip install 'vaecli[tensorboard]'"
    ]
    assert done.stderr.splitlines()[-1] == errors[0] and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_run_is_unknown_until_continued_then_one_session_with_each_step_once(runner, tiny, tmp_path):
    """A real Ctrl-C: the run's HParams row says Unknown; continued, it is the finished run's row, and
    the curves hold each metrics.csv row once (TensorBoard keeps a run's first session, so the
    earlier one must go)."""
    run_dir = tmp_path / "run"
    process = start(*tiny, "logger=tensorboard", "train.steps=100000", f"hydra.run.dir={run_dir}")
    wait_for_step(run_dir, 32, process)
    returncode, stderr = stop(process, signal.SIGINT)
    assert returncode == 130, stderr
    end = plugin_data(accumulator(run_dir / TB_DIR), "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_UNKNOWN")
    saved = checkpoint.load(run_dir)["step"]

    result = invoke(runner, "train", "--resume", str(run_dir), "train.steps=300")
    assert result.exit_code == 0, result.output
    events = accumulator(run_dir / TB_DIR)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for split in ("train", "test"):
        steps = [event.step for event in events.Scalars(f"{split}/neg_elbo_nats")]
        assert steps == list(metrics[metrics.split == split].step), split
    assert 32 <= saved < 300
    start_info = plugin_data(events, "_hparams_/session_start_info").session_start_info
    assert start_info.hparams["train.steps"].number_value == 300
    end = plugin_data(events, "_hparams_/session_end_info").session_end_info
    assert end.status == Status.Value("STATUS_SUCCESS")
