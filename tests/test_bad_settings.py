"""Every setting of every config group we ship, given a bad value of its type: exit 2, one line, no folder.

The keys come from the composed config itself (so a key added later is covered without an edit
here); launcher and sweeper keys from the launchers and the sweeper vaecli ships presets for.
"""

from __future__ import annotations

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from tests.conftest import invoke
from vaecli.config.hydra_bridge import compose

# in-type values that every key of that type refuses, unless a key says otherwise below
BAD_BY_TYPE = {float: "nan", bool: "maybe", str: "nonesuch", list: "[0]"}
BAD_INT = "-7"
BAD_BY_KEY = {
    "seed": "1.5",  # every whole number is a seed: a fraction is the bad value of its type
    "data.root": None,  # any folder name is fine: a file in its place is tested in test_data_root_that_is_a_file
    "train.adam_betas": "[0.9,1.5]",
    "model.hidden_sizes": "[0]",
    "train.eval_every": "-1",
    "train.checkpoint_every": "-1",
    "train.lr_schedule.decay": "2.0",
    "train.lr_schedule.growth": "0.5",
}
LAUNCHER_BAD = {
    "joblib": {"n_jobs": "0"},
    "submitit_local": {
        "timeout_min": "0",
        "cpus_per_task": "0",
        "gpus_per_node": "-1",
        "tasks_per_node": "0",
        "nodes": "0",
        "mem_gb": "0",
    },
    "submitit_slurm": {
        "timeout_min": "0",
        "cpus_per_task": "0",
        "tasks_per_node": "0",
        "nodes": "0",
        "max_num_timeout": "-1",
        "signal_delay_s": "-1",
        "array_parallelism": "0",
    },
    "batched": {"max_group": "0"},
}
SWEEPER_BAD = {
    "n_trials": "0",
    "n_jobs": "0",
    "direction": "upwards",
    "objective": "final.test.nonesuch",
    "storage": "'nonesuch://'",
}


def leaves(node, prefix=""):
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def bad_value(key: str, value) -> str | None:
    if key in BAD_BY_KEY:
        return BAD_BY_KEY[key]
    if isinstance(value, ListConfig):
        return BAD_BY_TYPE[list]
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return BAD_INT
    return BAD_BY_TYPE[type(value)]


def run_keys():
    cfg = compose([])
    keys = [(key, bad_value(key, value)) for key, value in leaves(OmegaConf.masked_copy(cfg, list(cfg.keys())))]
    return [(key, value) for key, value in keys if value is not None]


def assert_refused(result, *folders):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    assert "Warning" not in result.stderr
    for folder in folders:
        assert not folder.exists()


@pytest.mark.parametrize(("key", "value"), run_keys(), ids=[key for key, _ in run_keys()])
def test_every_run_setting_with_a_bad_value_is_refused_before_any_folder(runner, tiny, tmp_path, key, value):
    run_dir = tmp_path / "run"
    fixed = [item for item in tiny if not item.startswith(f"{key}=")]
    assert_refused(invoke(runner, "train", *fixed, f"{key}={value}", f"hydra.run.dir={run_dir}"), run_dir)


@pytest.mark.parametrize(
    ("launcher", "key", "value"),
    [(launcher, key, value) for launcher, keys in LAUNCHER_BAD.items() for key, value in keys.items()],
)
def test_every_launcher_setting_with_a_bad_value_is_refused_before_any_folder(
    runner, tiny, tmp_path, launcher, key, value
):
    sweep_dir = tmp_path / "sweep"
    arguments = ["beta=0,1", f"hydra/launcher={launcher}", f"hydra.launcher.{key}={value}"]
    assert_refused(invoke(runner, "sweep", *tiny, *arguments, f"hydra.sweep.dir={sweep_dir}"), sweep_dir)


@pytest.mark.parametrize(("key", "value"), SWEEPER_BAD.items())
def test_every_search_setting_with_a_bad_value_is_refused_before_any_folder(runner, tiny, tmp_path, key, value):
    sweep_dir = tmp_path / "search"
    arguments = ["hydra/sweeper=optuna", "beta=tag(log, interval(0.01, 1))", f"hydra.sweeper.{key}={value}"]
    assert_refused(invoke(runner, "sweep", *tiny, *arguments, f"hydra.sweep.dir={sweep_dir}"), sweep_dir)


def test_data_root_that_is_a_file_an_empty_run_dir_and_a_batch_beyond_the_data(runner, tiny, tmp_path):
    a_file = tmp_path / "data.bin"
    a_file.write_text("not a folder")
    fixed = [item for item in tiny if not item.startswith("data.root=")]
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", *fixed, f"data.root={a_file}", f"hydra.run.dir={run_dir}")
    assert_refused(result, run_dir)
    assert "is a file, not a folder" in result.stderr
    assert_refused(invoke(runner, "train", *tiny, "hydra.run.dir="))
    batch = invoke(runner, "train", *tiny, "train.batch_size=513", f"hydra.run.dir={run_dir}")
    assert_refused(batch, run_dir)
    assert "larger than the 512 training images" in batch.stderr
    empty_sweep = invoke(runner, "sweep", *tiny, "beta=0,1", "hydra.sweep.dir=")
    assert_refused(empty_sweep)


OBJECTIVES_SHIPPED = ("capacity", "tcvae", "factor", "dip")


def objective_keys():
    for name in OBJECTIVES_SHIPPED:
        cfg = compose([f"objective={name}"])
        for key, value in leaves(cfg.objective, "objective."):
            yield name, key, bad_value(key, value)


@pytest.mark.parametrize(("name", "key", "value"), list(objective_keys()))
def test_every_objective_setting_with_a_bad_value_is_refused_before_any_folder(
    runner, tiny, tmp_path, name, key, value
):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", *tiny, f"objective={name}", f"{key}={value}", f"hydra.run.dir={run_dir}")
    assert_refused(result, run_dir)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["objective=nonesuch"], "beta, capacity, dip, factor, tcvae"),
        (["objective=tcvae", "train.batch_size=1"], "train.batch_size=2 or more"),
        (["objective=factor", "latent_size=1"], "latent_size=2 or more"),
        (["objective=capacity", "objective.c_max=-1"], "objective.c_max"),
        (["objective.free_bits=-0.5"], "objective.free_bits"),
        (["objective.warmup_steps=10", "objective.cycles=2"], "set one of them"),
    ],
)
def test_objective_settings_that_cannot_work_together_are_refused(runner, tiny, tmp_path, overrides, says):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", *tiny, *overrides, f"hydra.run.dir={run_dir}")
    assert_refused(result, run_dir)
    assert says in result.stderr


def test_cycles_too_short_to_rise_are_refused(runner, tiny, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", *tiny, "objective=dip", "objective.cycles=8", f"hydra.run.dir={run_dir}")
    assert_refused(result, run_dir)
    assert "use objective.cycles=2 or fewer" in result.stderr


def conv_and_folder_keys():
    """Every key of model=conv, and every key data=folder adds to the data group."""
    conv = compose(["model=conv"])
    for key, value in leaves(conv.model, "model."):
        yield "model=conv", key, {"model.channels": "[0]"}.get(key) or bad_value(key, value)
    folder = compose(["data=folder", "data.path=/nonesuch"])
    for key in ("data.size", "data.channels", "data.test_fraction"):
        bad = {"data.test_fraction": "1.5"}.get(key) or bad_value(key, OmegaConf.select(folder, key))
        yield "data=folder", key, bad


@pytest.mark.parametrize(("group", "key", "value"), list(conv_and_folder_keys()))
def test_every_conv_and_folder_setting_with_a_bad_value_is_refused_before_any_folder(
    runner, tiny, tmp_path, group, key, value
):
    run_dir, pictures = tmp_path / "run", tmp_path / "pictures"
    pictures.mkdir()
    for index in range(4):
        Image.new("RGB", (20, 20), (index * 60, 0, 0)).save(pictures / f"{index}.png")
    extra = [f"data.path={pictures}"] if group == "data=folder" else []
    result = invoke(runner, "train", *tiny, group, *extra, f"{key}={value}", f"hydra.run.dir={run_dir}")
    assert_refused(result, run_dir)
    assert key in result.stderr
