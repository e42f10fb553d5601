"""Overrides reach the config; every impossible input is one line, exit 2, and no run folder."""

import subprocess
import sys

import pytest

from tests.conftest import invoke
from vaecli.config.hydra_bridge import compose
from vaecli.errors import UsageError


def test_defaults_reproduce_the_seed_experiment():
    cfg = compose([])
    assert list(cfg.model.hidden_sizes) == [100, 100]
    assert (cfg.latent_size, cfg.train.batch_size, cfg.train.lr, cfg.train.steps, cfg.beta) == (
        10,
        64,
        1e-3,
        1024,
        0.01,
    )
    assert cfg.train.shuffle is True and cfg.data.train_on == "train" and cfg.data.name == "mnist"


def test_overrides_are_typed_and_reach_every_group():
    cfg = compose(
        [
            "beta=0.5",
            "latent_size=2",
            "train.steps=5000",
            "model.hidden_sizes=[256,256]",
            "data=fashion_mnist",
            "train.shuffle=false",
            "data.train_on=all",
            "device=cpu",
            "seed=7",
        ]
    )
    assert cfg.beta == 0.5 and cfg.latent_size == 2 and cfg.train.steps == 5000
    assert list(cfg.model.hidden_sizes) == [256, 256]
    assert cfg.data.name == "fashion_mnist" and cfg.train.shuffle is False and cfg.data.train_on == "all"
    assert cfg.device == "cpu" and cfg.seed == 7


def test_data_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VAECLI_DATA", str(tmp_path))
    assert compose([]).data.root == str(tmp_path)


BAD_INPUTS = [
    ("betaa=1", "unknown config key 'betaa'"),
    ("latent_size=abc", "bad value for latent_size"),
    ("beta=-1", "beta=-1.0 is not allowed"),
    ("latent_size=0", "latent_size=0 is not allowed"),
    ("train.batch_size=0", "train.batch_size=0 is not allowed"),
    ("train.lr=0", "train.lr=0.0 is not allowed"),
    ("train.epochs=-1", "train.epochs=-1.0 is not allowed"),
    ("device=tpu", "device=tpu is not allowed"),
    ("data=cifar", "no config 'data/cifar'; choose one of: dsprites, fashion_mnist, folder, mnist"),
    ("model.hidden_sizes=[a]", "bad value for model.hidden_sizes[0]"),
    ("beta=0,1", "`vae sweep` runs one model per value"),
    ("beta=nan", "beta=nan is not allowed: beta must be a finite number"),
    ("beta=inf", "beta=inf is not allowed: beta must be a finite number"),
    ("train.lr=inf", "train.lr=inf is not allowed: train.lr must be a finite number"),
    ("train.lr=nan", "train.lr=nan is not allowed: train.lr must be a finite number"),
    ("model.min_scale=inf", "model.min_scale=inf is not allowed"),
    ("train.epochs=nan", "train.epochs=nan is not allowed"),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_code_2(runner, tmp_path, override, message):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", override, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not run_dir.exists()


def test_value_rules_raise_usage_errors_naming_the_key():
    with pytest.raises(UsageError, match="train.steps"):
        compose(["train.steps=0"])


def test_every_float_setting_must_be_finite(runner, tiny, tmp_path):
    result = invoke(runner, "sweep", *tiny, "beta=0,nan", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.exit_code == 2 and "beta=nan is not allowed" in result.stderr
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(UsageError, match="extra=inf is not allowed"):
        compose(["+extra=inf"])


def test_real_process_gives_no_traceback_and_leaves_no_folder(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vaecli", "train", "latent_size=abc"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cfg_job_prints_the_config_without_running(runner, tmp_path):
    result = invoke(runner, "train", "--cfg", "job", "beta=0.25", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 0
    assert "beta: 0.25" in result.stdout
    assert not (tmp_path / "run").exists()
