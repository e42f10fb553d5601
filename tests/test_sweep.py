"""`vae sweep` on a small real slice: launchers, aggregation, failures, resume and --report."""

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import invoke, vae_without
from vaecli.config import extras
from vaecli.errors import UsageError
from vaecli.sweep.command import TRIAL_SUBDIR, plan

GRID = ["beta=0,0.5", "latent_size=2,4"]
needs_optuna = pytest.mark.skipif(bool(extras.missing("optuna")), reason="the optuna extra is not installed")
EXPECTED_MEMBERS = {"beta=0,latent_size=2", "beta=0,latent_size=4", "beta=0.5,latent_size=2", "beta=0.5,latent_size=4"}
PLOTS = [
    "loss_curves.png",
    "rate_distortion.png",
    "neg_elbo.png",
    "montage_reconstructions.png",
    "montage_traversal.png",
]


def sweep(runner, tiny, sweep_dir, *overrides):
    return invoke(runner, "sweep", *tiny, *overrides, f"hydra.sweep.dir={sweep_dir}")


def member_folders(sweep_dir):
    return {path.parent.parent.name for path in sweep_dir.glob("*/.hydra/config.yaml")}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory, runner, tiny):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "basic"
    result = sweep(runner, tiny, sweep_dir, *GRID)
    assert result.exit_code == 0, result.output
    return sweep_dir, result


def test_basic_launcher_runs_every_member_as_a_full_run(basic_sweep):
    sweep_dir, result = basic_sweep
    assert member_folders(sweep_dir) == EXPECTED_MEMBERS
    for member in EXPECTED_MEMBERS:
        for name in ("metrics.csv", "checkpoint.pt", "loss.png", "reconstructions.png", "traversal.png"):
            assert (sweep_dir / member / name).is_file()
    assert "4 members" in result.stdout


def test_sweep_csv_has_one_typed_row_per_member(basic_sweep):
    sweep_dir, _ = basic_sweep
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4 and set(table.status) == {"ok"}
    assert sorted(table.latent_size.unique()) == [2, 4] and sorted(table.beta.unique()) == [0.0, 0.5]
    for column in (
        "overrides",
        "seconds",
        "train_loss",
        "train_neg_elbo_nats",
        "test_reconstruction",
        "test_kl",
        "test_recon_nats",
        "test_kl_nats",
        "test_neg_elbo_nats",
    ):
        assert column in table and table[column].notna().all(), column
    assert table.held_out.all()  # data.train_on=train: test_* columns are on held-out images
    for column in ("vaecli_version", "python_version", "torch_version", "torchvision_version", "hydra_version"):
        assert table[column].notna().all() and table[column].nunique() == 1, column
    assert table.torch_version.iloc[0] == metadata.version("torch")
    long = pd.read_csv(sweep_dir / "metrics_long.csv")
    assert set(long.member) == EXPECTED_MEMBERS and {"beta", "latent_size", "step", "split"} <= set(long.columns)
    for name in PLOTS:
        assert (sweep_dir / name).stat().st_size > 1000, name


def test_plain_autoencoder_members_have_larger_kl(basic_sweep):
    table = pd.read_csv(basic_sweep[0] / "sweep.csv")
    assert table[table.beta == 0].test_kl_nats.min() > table[table.beta == 0.5].test_kl_nats.max()


def test_joblib_runs_members_in_parallel_processes(runner, tiny, tmp_path):
    result = sweep(runner, tiny, tmp_path / "joblib", *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "joblib" / "sweep.csv")
    assert len(table) == 4 and set(table.status) == {"ok"}
    pids = {json.loads((tmp_path / "joblib" / m / "result.json").read_text())["pid"] for m in EXPECTED_MEMBERS}
    assert len(pids) >= 2  # not the launching process alone
    multirun = (tmp_path / "joblib" / "multirun.yaml").read_text()
    assert "JoblibLauncher" in multirun
    for member in EXPECTED_MEMBERS:  # a worker process records the launching command line, not its own
        assert json.loads((tmp_path / "joblib" / member / "provenance.json").read_text())["command"] == sys.argv


def test_members_trained_on_the_test_images_are_marked(runner, tiny, tmp_path):
    result = sweep(runner, tiny, tmp_path / "all", "beta=0,0.5", "data.train_on=all", "train.steps=4")
    assert result.exit_code == 0, result.output
    assert "warning: data.train_on=all trains on the test images too" in result.stderr
    table = pd.read_csv(tmp_path / "all" / "sweep.csv")
    assert len(table) == 2 and not table.held_out.any()
    shown = " ".join(result.stdout.split())  # the table's title wraps at its width
    assert "sorted by -ELBO on the test images" in shown and "sorted by test -ELBO" not in shown
    assert "* 2 of 2 trained on them (data.train_on=all): not held out" in shown
    assert "beta=0.0*" in shown and "beta=0.5*" in shown


def test_failed_member_is_recorded_and_the_others_run(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "failing"
    result = sweep(runner, tiny, sweep_dir, "beta=0,0.5", "train.lr=1e-3,1e6")  # lr=1e6 really diverges
    assert result.exit_code == 1
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4
    failed = table[table.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("TrainingDiverged").all()
    assert (table[table.status == "ok"].test_neg_elbo_nats > 0).all()
    assert "2 of 4 members failed" in result.stderr


def test_resume_skips_completed_members_and_reruns_failed_ones(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "resume"
    assert sweep(runner, tiny, sweep_dir, *GRID).exit_code == 0
    done = sweep_dir / "beta=0,latent_size=2"
    broken = sweep_dir / "beta=0.5,latent_size=4"
    kept_stamp = (done / "checkpoint.pt").stat().st_mtime_ns
    (broken / "result.json").write_text(json.dumps({"status": "failed", "error": "simulated"}))
    shutil.rmtree(sweep_dir / "beta=0.5,latent_size=2")
    result = sweep(runner, tiny, sweep_dir, *GRID)
    assert result.exit_code == 0, result.output
    assert (done / "checkpoint.pt").stat().st_mtime_ns == kept_stamp
    assert json.loads((broken / "result.json").read_text())["status"] == "ok"
    assert (sweep_dir / "beta=0.5,latent_size=2" / "checkpoint.pt").is_file()
    assert set(pd.read_csv(sweep_dir / "sweep.csv").status) == {"ok"}


def test_report_aggregates_a_copied_sweep_folder(basic_sweep, runner, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(basic_sweep[0], copy)
    for name in ("sweep.csv", "metrics_long.csv", *PLOTS):
        (copy / name).unlink()
    result = invoke(runner, "sweep", "--report", str(copy))
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(copy / "sweep.csv")) == 4
    assert all((copy / name).is_file() for name in PLOTS)


def test_report_refuses_a_folder_without_members(runner, tmp_path):
    result = invoke(runner, "sweep", "--report", str(tmp_path))
    assert result.exit_code == 2 and "no sweep members" in result.stderr


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["beta=0,-1"], "beta=-1.0 is not allowed"),
        (["latent_size=2,abc"], "bad value for latent_size"),
        (["beta=0,1", "hydra/launcher=nonesuch"], "no config 'hydra/launcher/nonesuch'"),
        (["betta=0,1"], "unknown config key 'betta'"),
        pytest.param(["hydra/sweeper=optuna", "beta=interval(-1,1)"], "beta=-1.0 is not allowed", marks=needs_optuna),
        pytest.param(
            ["hydra/sweeper=optuna", "latent_size=range(3,3)"],
            "latent_size=range(3,3): the range is empty",
            marks=needs_optuna,
        ),
        pytest.param(
            ["hydra/sweeper=optuna", "train.steps=8"], "hydra/sweeper=optuna needs a key to search", marks=needs_optuna
        ),
    ],
)
def test_bad_grids_are_refused_before_anything_runs(runner, tmp_path, grid, message):
    result = invoke(runner, "sweep", *grid, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


def test_sweep_without_data_is_one_line_and_leaves_no_folder(runner, tmp_path, offline_fashion_mnist):
    sweep_dir = tmp_path / "sweep"
    result = invoke(
        runner,
        "sweep",
        "beta=0,1",
        "data=fashion_mnist",
        f"data.root={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.exit_code == 1
    assert "no verified fashion_mnist files" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert sum(line.startswith("error: ") for line in result.stderr.splitlines()) == 1
    assert not sweep_dir.exists()


def test_default_study_and_hydra_sweep_syntax():
    default = plan(["train.steps=10"])
    assert len(default.members) == 16
    assert {m for member in default.members for m in member if m.startswith("beta=")} == {
        "beta=0",
        "beta=0.01",
        "beta=0.1",
        "beta=1",
    }
    ranged = plan(["latent_size=range(2,8,2)", "beta=choice(0,1)"])
    assert len(ranged.members) == 6
    slurm = plan(["beta=0,1", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug"])
    assert "hydra.launcher.partition=debug" in slurm.arguments
    assert "hydra.launcher.cpus_per_task=2" in slurm.arguments and "hydra.launcher.timeout_min=60" in slurm.arguments


# ----------------------------------------------------------------------------- Optuna searches

SEARCH = ["hydra/sweeper=optuna", "beta=tag(log, interval(0.001, 1))", "latent_size=range(2,21)"]


@needs_optuna
def test_an_optuna_search_is_checked_through_its_probes_not_a_grid():
    searched = plan([*SEARCH, "hydra.sweeper.n_trials=20"])
    assert (searched.sweeper, searched.total, searched.members) == ("optuna", 20, [])
    assert sorted((cfg.beta, cfg.latent_size) for cfg in searched.configs) == [(0.001, 2), (0.001, 20), (1.0, 2)]
    assert f"hydra.sweep.subdir={TRIAL_SUBDIR}" in searched.arguments  # trial numbers keep equal trials apart
    assert not any("beta=0,0.01" in item for item in searched.arguments)  # no default grid added


@needs_optuna
def test_the_best_beta_preset_is_an_optuna_search_over_beta():
    preset = plan(["search=best_beta", "train.steps=8"])
    assert (preset.sweeper, preset.total) == ("optuna", 20)
    assert sorted(cfg.beta for cfg in preset.configs) == [0.001, 1.0]
    assert {cfg.latent_size for cfg in preset.configs} == {10}
    assert {cfg.hydra.sweeper.sampler.seed for cfg in preset.configs} == {0}
    with pytest.raises(UsageError, match="no config 'search/nonesuch'"):
        plan(["search=nonesuch"])


def test_a_search_draws_its_neg_elbo_figure_on_a_numeric_axis(tmp_path):
    from vaecli.inspect import plots

    betas = [0.001 * 1.7**i for i in range(12)]  # more values than a grid names: one tick each would collide
    done = pd.DataFrame({"beta": betas, "latent_size": 10, "test_neg_elbo_nats": [130 + b * 50 for b in betas]})
    assert plots.final_against(done, tmp_path / "neg_elbo.png", "beta", "latent_size").stat().st_size > 1000


@needs_optuna
def test_an_optuna_search_runs_trials_as_members_and_names_the_best(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "search"
    searched = ["hydra/sweeper=optuna", "beta=tag(log, interval(0.001, 1))", "latent_size=range(2,5)"]
    result = sweep(runner, tiny, sweep_dir, *searched, "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=0")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4 and set(table.status) == {"ok"}
    assert sorted(member.split("_", 1)[0] for member in table.member) == ["0", "1", "2", "3"]
    assert set(table.latent_size) <= {2, 3, 4} and table.beta.between(0.001, 1).all()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert (best["trials"], best["completed"], best["failed"]) == (4, 4, 0)
    winner = table.loc[table.test_neg_elbo_nats.idxmin()]
    assert best["best_value"] == pytest.approx(winner.test_neg_elbo_nats, rel=1e-5)
    assert Path(best["best_trial"]["output_dir"]).name == winner.member
    assert best["best_params"] == {"beta": pytest.approx(winner.beta), "latent_size": winner.latent_size}
    assert "best trial" in result.stdout and winner.member in result.stdout.replace("\n", "")
    assert "Optuna search of 4 trials" in result.stderr
    assert all((sweep_dir / name).is_file() for name in PLOTS)


@needs_optuna
@pytest.mark.filterwarnings("ignore:BruteForceSampler is experimental")
def test_a_diverging_trial_is_failed_and_the_search_goes_on(runner, tiny, tmp_path):
    sweep_dir = tmp_path / "search"
    brute_force = ["hydra/sweeper/sampler=random", "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler"]
    searched = ["hydra/sweeper=optuna", "train.lr=choice(0.001,1e30)", "beta=choice(0.01,0.1)", *brute_force]
    result = sweep(runner, tiny, sweep_dir, *searched, "hydra.sweeper.n_trials=4")
    assert result.exit_code == 1  # as for any sweep with failed members
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 4
    failed = table[table.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("TrainingDiverged: training diverged").all()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert (best["trials"], best["completed"], best["failed"]) == (4, 2, 2)
    assert best["best_params"]["train.lr"] == 0.001
    assert "2 of 4 members failed" in result.stderr


def test_an_optuna_search_without_optuna_is_one_line_and_no_folder(tmp_path):
    done = vae_without("optuna", "sweep", *SEARCH, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: hydra/sweeper=optuna needs optuna, which is not installed: pip install 'vaecli[optuna]'"
    ]
    assert list(tmp_path.iterdir()) == []
