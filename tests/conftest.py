"""Shared fixtures: real MNIST (fetched once per session) and tiny configs that train in seconds."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaecli.cli.app import app
from vaecli.config.schema import default_root
from vaecli.data.sources import DATASETS, ensure_dataset


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_root()
    ensure_dataset(DATASETS["mnist"], root)
    return root


@pytest.fixture(scope="session")
def gz_root(tmp_path_factory, data_root: Path) -> Path:
    """torchvision's layout before extraction: only the downloaded .gz files under <root>/MNIST/raw."""
    from vaecli.data.sources import IDX_FILES, MNIST

    root = tmp_path_factory.mktemp("gz")
    raw = MNIST.raw_dir(root)
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress((MNIST.raw_dir(data_root) / name).read_bytes(), 1))
    return root


@pytest.fixture(scope="session")
def tiny(data_root: Path) -> list[str]:
    """Overrides for a few steps on a small real slice: 512 training and 256 test images."""
    return [
        f"data.root={data_root}",
        "data.limit=512",
        "data.test_limit=256",
        "train.steps=8",
        "train.batch_size=32",
        "train.progress=false",
        "threads=1",
    ]


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the real `vae` command in-process; exceptions propagate so failures are visible."""
    return runner.invoke(app, list(args), catch_exceptions=False)


def vae_without(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real `vae` command in a fresh process where ``module`` cannot be imported, as without its extra."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['vae', *{list(args)!r}]; "
        "import vaecli.cli.app; vaecli.cli.app.main()"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, runner: CliRunner, tiny: list[str]) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "first"
    result = invoke(runner, "train", *tiny, "train.steps=40", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def offline_fashion_mnist(tmp_path, monkeypatch):
    """Fashion-MNIST with no system folder and a download that fails, as on a machine cut off from it."""
    import dataclasses

    from vaecli.data import sources as datasets

    offline = dataclasses.replace(datasets.FASHION_MNIST, system_dirs=(str(tmp_path / "nowhere"),))
    monkeypatch.setitem(datasets.DATASETS, "fashion_mnist", offline)
    monkeypatch.setattr(datasets, "_torchvision_download", lambda *args: (_ for _ in ()).throw(OSError("offline")))


def fail_at_step(monkeypatch, step: int) -> None:
    """Make an in-process training fail at ``step``: the batch for that step raises, as a bug would."""
    from vaecli.data.tensors import Batches

    real = Batches.batch

    def batch(self, at: int):
        if at == step:
            raise RuntimeError(f"failing at step {step}, as this test asks")
        return real(self, at)

    monkeypatch.setattr(Batches, "batch", batch)


def slurm_reachable() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A live SLURM cluster; under CI=true its absence is a failure, elsewhere a skip."""
    if slurm_reachable():
        return
    message = 'no SLURM cluster reachable: run `eval "$(scripts/slurm-local.sh start)"` first'
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
