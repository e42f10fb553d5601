"""`vae train` end to end on a small real slice: files, metrics rows, determinism, failures."""

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

import vaecli
from tests.conftest import fail_at_step, invoke
from vaecli.data.sources import IDX_FILES, MNIST
from vaecli.inspect.images import grid_size
from vaecli.run.bookkeeping import TrainingDiverged, eval_steps, log_steps
from vaecli.run.loop import DivergenceWatch
from vaecli.runfolder.metrics import METRIC_COLUMNS, TIMING_COLUMNS

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
RUN_FILES = [
    ".hydra/config.yaml",
    "provenance.json",
    ".hydra/overrides.yaml",
    "metrics.csv",
    "loss.png",
    "reconstructions.png",
    "traversal.png",
    "checkpoint.pt",
    "train.log",
    "result.json",
]


def train(runner, tiny, run_dir, *overrides):
    result = invoke(runner, "train", *tiny, f"hydra.run.dir={run_dir}", *overrides)
    return result


def test_run_folder_holds_every_artifact(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    assert Image.open(trained_run / "reconstructions.png").size[::-1] == grid_size(2, 8)
    assert Image.open(trained_run / "traversal.png").size[::-1] == grid_size(10, 10)
    assert Image.open(trained_run / "loss.png").size[0] > 300
    assert json.loads((trained_run / "result.json").read_text())["status"] == "ok"
    assert "step 32" in (trained_run / "train.log").read_text()


def test_metrics_schema_and_logged_steps(trained_run):
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    train_rows, test_rows = metrics[metrics.split == "train"], metrics[metrics.split == "test"]
    assert metrics.held_out.dtype == bool and test_rows.held_out.all() and not train_rows.held_out.any()
    assert list(train_rows.step) == [1, 2, 4, 8, 16, 32, 40]
    assert list(test_rows.step) == [1, 4, 16, 40]
    assert (metrics.neg_elbo_nats - metrics.recon_nats - metrics.kl_nats).abs().max() < 1e-3
    assert ((metrics.reconstruction * 784 - metrics.recon_nats).abs() < 1e-2).all()
    assert metrics.seconds.is_monotonic_increasing
    assert (train_rows.images_per_s > 0).all()
    assert metrics.epoch.iloc[-1] == pytest.approx(40 / (512 // 32))


def test_schedules_follow_the_seed():
    assert log_steps(1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert log_steps(1000)[-2:] == [512, 1000]
    assert sorted(eval_steps(1024, None)) == [1, 4, 16, 64, 256, 1024]
    assert sorted(eval_steps(10, 0)) == [10]
    assert sorted(eval_steps(10, 4)) == [4, 8, 10]


def test_same_seed_gives_identical_metrics(runner, tiny, tmp_path):
    frames = []
    for name in ("a", "b"):
        assert train(runner, tiny, tmp_path / name, "seed=3").exit_code == 0
        frames.append(pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=list(TIMING_COLUMNS)))
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    assert train(runner, tiny, tmp_path / "c", "seed=4").exit_code == 0
    other = pd.read_csv(tmp_path / "c" / "metrics.csv").drop(columns=list(TIMING_COLUMNS))
    assert not other.equals(frames[0])


def test_epochs_seed_order_and_all_images(runner, tiny, tmp_path):
    result = train(runner, tiny, tmp_path / "run", "train.epochs=2", "train.shuffle=false", "data.train_on=all")
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    # 512 training + 256 test images in batches of 32 = 24 steps per epoch
    assert metrics.step.max() == 48 and metrics.epoch.max() == pytest.approx(2.0)
    # its "test" rows are on images it trained on: said on the terminal, in train.log, the CSV and the table
    assert "warning: data.train_on=all trains on the test images" in result.stderr
    assert "WARNING] data.train_on=all trains on the test images too" in (tmp_path / "run" / "train.log").read_text()
    assert not metrics.held_out.any() and len(metrics[metrics.split == "test"]) > 0
    shown = " ".join(result.stdout.split())  # the table's title wraps at its width
    assert "test* = images it trained on (data.train_on=all): not held out" in shown
    assert "│ test* │" in shown.split("not held out", 1)[1]


def test_a_failing_run_says_why_and_keeps_its_folder(runner, tiny, tmp_path, monkeypatch):
    fail_at_step(monkeypatch, 3)
    result = train(runner, tiny, tmp_path / "run")
    assert result.exit_code == 1
    assert "failing at step 3" in result.stderr and "Traceback" not in result.stderr
    status = json.loads((tmp_path / "run" / "result.json").read_text())
    assert status["status"] == "failed" and "failing at step 3" in status["error"]
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").step.max() == 2


def test_nan_in_a_test_evaluation_is_divergence_not_a_row(runner, tiny, tmp_path):
    """lr=1e30: step 1's loss is finite (computed before its update), the weights after it are finite
    (about 1e30), and the test evaluation after step 1 overflows."""
    result = train(runner, tiny, tmp_path / "run", "train.lr=1e30")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: training diverged at the update of step 1 (the test evaluation after it gave ")
    assert "Traceback" not in result.stderr
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics.split) == ["train"] and metrics.neg_elbo_nats.notna().all()  # no non-finite row written
    status = json.loads((tmp_path / "run" / "result.json").read_text())
    assert status["status"] == "failed" and "training diverged at the update of step 1" in status["error"]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_divergence_names_the_update_after_which_the_forward_pass_overflows(runner, tiny, tmp_path):
    """lr=1e5: the update of step 1 leaves finite weights too large for step 2's forward pass."""
    finite_after: list[bool] = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: finite_after.append(
            all(bool(w.isfinite().all()) for group in optimizer.param_groups for w in group["params"])
        )
    )
    try:
        result = train(runner, tiny, tmp_path / "run", "train.lr=1e5", "train.eval_every=0")
    finally:
        hook.remove()
    assert result.exit_code == 1
    assert "training diverged at the update of step 1 (the forward pass of step 2 gave NaN or inf)" in result.stderr
    assert finite_after[0]  # the weights were finite after step 1: the loss, not the weights, went first


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device note"])
def test_divergence_watch_names_the_update_before_the_first_broken_forward_pass(on_host):
    watch = DivergenceWatch(torch.device("cpu"), on_host=on_host)
    kl_term, logits = torch.tensor(0.5), torch.ones(4, 784)
    for step in range(1, 6):
        watch.observe(step, logits, kl_term)
    watch.check(5, 1.0)  # all finite: nothing to say
    watch.observe(6, logits, torch.tensor(float("inf")))
    watch.observe(7, torch.full((4, 784), float("nan")), kl_term)
    with pytest.raises(TrainingDiverged, match=r"update of step 5 \(the forward pass of step 6 gave NaN or inf\)"):
        watch.check(8, float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became inf at step 3"):
        DivergenceWatch(torch.device("cpu"), on_host=on_host).check(3, float("inf"))


def test_divergence_names_the_update_that_broke_the_weights(runner, tiny, tmp_path):
    """A NaN put into one weight by the update of step 37 (torch's own optimizer hook), in a run
    that reads its loss only every 3 steps: the message names 37, not the next step it checks."""
    calls = []

    def poison(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 37:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][2][0, 0] = float("nan")

    hook = register_optimizer_step_post_hook(poison)
    try:
        result = train(runner, tiny, tmp_path / "run", "train.steps=300", "train.eval_every=0")
    finally:
        hook.remove()
    assert result.exit_code == 1, result.output
    assert "training diverged at the update of step 37 (the forward pass of step 38 gave NaN or inf)" in result.stderr
    assert 37 not in log_steps(300) and 37 % 3 and 38 % 3  # no scheduled check at 37 or 38


@pytest.mark.slow
def test_seed_config_reaches_the_seed_quality(runner, data_root, tmp_path):
    """The full seed run: 1024 steps at the defaults; the seed's own code reached 143-145 nats."""
    result = invoke(
        runner,
        "train",
        f"data.root={data_root}",
        "train.progress=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.exit_code == 0, result.output
    final = pd.read_csv(tmp_path / "metrics.csv").iloc[-1]
    assert final.split == "test" and final.step == 1024
    assert final.neg_elbo_nats < 147


def test_missing_dataset_is_one_line_and_leaves_no_folder(runner, tmp_path, offline_fashion_mnist):
    result = invoke(
        runner, "train", "data=fashion_mnist", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert result.exit_code == 1
    assert (
        "no verified fashion_mnist files" in result.stderr and "apt-get install dataset-fashion-mnist" in result.stderr
    )
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not FASHION_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_the_system_package(runner, tiny, tmp_path):
    overrides = [item for item in tiny if not item.startswith("data.root=")]
    result = train(runner, overrides, tmp_path / "run", "data=fashion_mnist", f"data.root={tmp_path / 'data'}")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").neg_elbo_nats.notna().all()


def test_provenance_of_a_real_process_from_a_gz_only_root(tiny, gz_root, tmp_path):
    """`python -m vaecli train` on a root holding only torchvision's .gz downloads: used as they are,
    nothing fetched, and provenance.json records versions, machine, command line and the files' MD5s."""
    overrides = [item for item in tiny if not item.startswith("data.root=")]
    command = ["train", *overrides, f"data.root={gz_root}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-m", "vaecli", *command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fetching" not in done.stderr
    assert sorted(path.name for path in MNIST.raw_dir(gz_root).iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)
    record = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert record["command"][1:] == command and record["command"][0].endswith("__main__.py")
    assert record["versions"] == {
        "vaecli": vaecli.__version__,
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "torchvision": metadata.version("torchvision"),
        "hydra": metadata.version("hydra-core"),
    }
    assert (record["host"], record["device"], record["threads"]) == (platform.node(), "cpu", 1)
    files = {Path(item["path"]).name: item["md5"] for item in record["data"]["files"]}
    assert files == {f"{name}.gz": MNIST.raw_md5[name] for name in IDX_FILES}
    package = Path(vaecli.__file__).parent
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout: its commit is recorded
        assert record["git_commit"] == head.stdout.strip() and isinstance(record["git_dirty"], bool)


def test_torchvision_processed_cache_cannot_replace_the_verified_images(runner, tiny, data_root, tmp_path):
    """A 300-image processed/training.pt (which torchvision's MNIST class would load instead of the
    raw files): training still reads the 60,000 verified images."""
    raw = MNIST.raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).symlink_to(MNIST.raw_dir(data_root) / name)
    processed = tmp_path / "data" / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        torch.save((torch.zeros(300, 28, 28, dtype=torch.uint8), torch.zeros(300, dtype=torch.int64)), processed / name)
    overrides = [item for item in tiny if not item.startswith(("data.root=", "data.limit="))]
    result = train(runner, overrides, tmp_path / "run", f"data.root={tmp_path / 'data'}")
    assert result.exit_code == 0, result.output
    assert "training 8 steps on 60000 mnist images" in (tmp_path / "run" / "train.log").read_text()
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").epoch.iloc[-1] == pytest.approx(round(8 / (60000 // 32), 4))
