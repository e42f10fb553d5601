"""vaecli's Optuna sweeper plugin: the search space it reads, and real searches of a tiny Hydra app.

The app stands in for vaecli's task (same return shape, milliseconds per trial), so these tests
exercise Hydra's plugin discovery, the launchers and Optuna for real without training a model.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="the optuna extra is not installed")

import yaml  # noqa: E402
from hydra.core.utils import JobReturn, JobStatus  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from vaecli.sweep.optuna.outcome import ObjectiveNotFound, Outcome, outcome  # noqa: E402
from vaecli.sweep.optuna.space import search_space  # noqa: E402
from vaecli.sweep.optuna.study import RESULTS_NAME, batch_size  # noqa: E402

# Returns vaecli's result shape; beta=0.5 diverges (NaN), beta=0.25 raises, n=5 reports a failed member.
APP = """
import math
import hydra
from omegaconf import DictConfig


@hydra.main(config_path=None, config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    if cfg.beta == 0.25:
        raise RuntimeError("exploded")
    if cfg.n == 5:
        return {"status": "failed", "error": "TrainingDiverged: loss became nan"}
    value = float("nan") if cfg.beta == 0.5 else (math.log10(cfg.beta) + 2) ** 2 + (cfg.n - 3) ** 2
    return {"status": "ok", "final": {"test": {"neg_elbo_nats": value}}}


if __name__ == "__main__":
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="config", node={"beta": 0.1, "n": 2})
    search = {"n": "range(2,5)", "beta": "tag(log, interval(0.001, 1))"}
    hydra_settings = {"sweeper": {"params": search, "n_trials": 3}}
    preset = {"defaults": [{"override hydra/sweeper": "optuna"}, "_self_"], "hydra": hydra_settings}
    store.store(name="preset", node={**preset, "beta": 0.1, "n": 2})
    main()
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def search(app: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    sweep_dir = app.parent / "sweep"
    flags = [item for item in overrides if item.startswith("--")]  # Hydra's flags go before the overrides
    overrides = tuple(item for item in overrides if not item.startswith("--"))
    command = [sys.executable, str(app), "--multirun", *flags, "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(
        [*command, *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=app.parent, timeout=240
    )
    if check:
        assert done.returncode == 0, done.stdout[-3000:]
    return done  # Hydra logs to stdout, errors go to stderr: both are in .stdout


def results(app: Path) -> dict:
    return yaml.safe_load((app.parent / "sweep" / RESULTS_NAME).read_text())


# ----------------------------------------------------------------------------- search space


def test_overrides_become_optuna_distributions():
    space = search_space(
        [
            "beta=tag(log, interval(0.001, 1))",
            "latent_size=range(2,21)",
            "lr=interval(0.0001, 0.01)",
            "model.hidden_sizes=choice([100,100],[200])",
            "seed=1,2,3",
            "+extra=7",
            "train.steps=64",
        ]
    )
    assert space.distributions["beta"] == FloatDistribution(0.001, 1.0, log=True)
    assert space.distributions["latent_size"] == IntDistribution(2, 20)  # range's stop is never drawn
    assert space.distributions["lr"] == FloatDistribution(0.0001, 0.01)
    assert space.distributions["model.hidden_sizes"] == CategoricalDistribution(["[100,100]", "[200]"])
    assert space.distributions["seed"] == CategoricalDistribution([1, 2, 3])
    assert space.fixed == ("+extra=7", "train.steps=64")
    assert space.overrides({"beta": 0.0125, "latent_size": 10, "model.hidden_sizes": "[200]", "seed": 2}) == [
        "+extra=7",
        "train.steps=64",
        "beta=0.0125",
        "latent_size=10",
        "model.hidden_sizes=[200]",
        "seed=2",
    ]


def test_ranges_with_steps_floats_and_shuffle():
    space = search_space(["a=range(10,2,-3)", "b=range(0,1,0.25)", "c=shuffle(range(1,4))", "+d=interval(1,2)"])
    assert space.distributions["a"] == IntDistribution(4, 10, step=3)
    assert space.distributions["b"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert set(space.distributions["c"].choices) == {1, 2, 3}
    assert space.overrides({"d": 1.5}) == ["+d=1.5"]  # an added key stays added


def test_a_later_override_of_the_same_key_wins():
    space = search_space(["beta=interval(0,1)", "latent_size=range(2,4)", "beta=0.1"])
    assert list(space.distributions) == ["latent_size"]
    assert space.fixed == ("beta=0.1",)


def test_probes_cover_every_choice_and_both_ends_of_every_range():
    space = search_space(["beta=tag(log, interval(0.001, 1))", "latent_size=range(2,21)", "seed=1,2", "train.steps=8"])
    assert space.probes() == [
        ["train.steps=8", "beta=0.001", "latent_size=2", "seed=1"],
        ["train.steps=8", "beta=1.0", "latent_size=2", "seed=1"],
        ["train.steps=8", "beta=0.001", "latent_size=20", "seed=1"],
        ["train.steps=8", "beta=0.001", "latent_size=2", "seed=2"],
    ]


def test_sweeps_it_cannot_sample_are_named():
    with pytest.raises(ValueError, match="x=range\\(3,3\\): the range is empty"):
        search_space(["x=range(3,3)"])


# ----------------------------------------------------------------------------- outcomes


def job(value=None, error: Exception | None = None) -> JobReturn:
    done = JobReturn(status=JobStatus.FAILED if error else JobStatus.COMPLETED)
    done._return_value = error if error else value
    return done


def test_outcome_reads_the_objective_or_says_why_the_trial_failed():
    path = "final.test.neg_elbo_nats"
    assert outcome(job({"status": "ok", "final": {"test": {"neg_elbo_nats": 90.5}}}), path) == Outcome(90.5)
    assert outcome(job(3), path) == Outcome(3.0)  # any Hydra app may return the number itself
    assert outcome(job({"status": "failed", "error": "diverged"}), path) == Outcome(None, "diverged")
    assert outcome(job(error=RuntimeError("boom")), path) == Outcome(None, "RuntimeError: boom")
    assert outcome(job(math.nan), path).value is None
    assert outcome(job(None), path).value is None
    with pytest.raises(ObjectiveNotFound, match="no 'valid' in the task's result \\(has: test\\)"):
        outcome(job({"status": "ok", "final": {"test": {}}}), "final.valid.loss")


def test_batches_follow_the_launchers_parallelism():
    from omegaconf import OmegaConf

    assert batch_size(3, OmegaConf.create({})) == 3
    assert batch_size(None, OmegaConf.create({"n_jobs": 2})) == 2
    assert batch_size(None, OmegaConf.create({})) == 1
    assert batch_size(None, OmegaConf.create({"n_jobs": -1})) >= 1


# ----------------------------------------------------------------------------- real searches


def test_four_trials_write_members_and_the_best_trial(app: Path):
    search(app, "beta=tag(log, interval(0.001, 1))", "n=range(2,5)", "hydra.sweeper.n_trials=4", "+x=1")
    found = results(app)
    assert (found["trials"], found["completed"], found["failed"]) == (4, 4, 0)
    assert sorted(p.name for p in (app.parent / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert 2 <= found["best_params"]["n"] <= 4 and 0.001 <= found["best_params"]["beta"] <= 1
    best = found["best_trial"]
    assert best["overrides"][0] == "+x=1" and Path(best["output_dir"]).is_dir()
    beta, n = found["best_params"]["beta"], found["best_params"]["n"]
    assert found["best_value"] == pytest.approx((math.log10(beta) + 2) ** 2 + (n - 3) ** 2)


def test_failed_trials_are_told_failed_and_the_search_goes_on(app: Path):
    # Optuna's brute-force sampler tries each of the 6 combinations once: one succeeds, and the
    # others raise (beta=0.25, twice), return NaN (beta=0.5, n=3) or report a failed member (n=5)
    done = search(
        app,
        "beta=choice(0.01,0.25,0.5)",
        "n=choice(3,5)",
        "hydra.sweeper.n_trials=10",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
    )
    found = results(app)
    assert (found["trials"], found["completed"], found["failed"]) == (6, 1, 5)  # 6 points, then it stops
    assert found["best_params"] == {"beta": 0.01, "n": 3}
    assert done.stdout.count("failed: RuntimeError: exploded") == 2
    assert done.stdout.count("failed: the objective is nan") == 1
    assert done.stdout.count("failed: TrainingDiverged: loss became nan") == 2


def test_a_preset_config_holds_the_search_space(app: Path):
    search(app, "--config-name=preset", "beta=0.01")  # the command line fixes beta: only n is searched
    found = results(app)
    assert found["trials"] == 3 and set(found["best_params"]) == {"n"}
    assert found["best_trial"]["overrides"][0] == "beta=0.01"


def test_joblib_runs_trials_in_parallel_batches(app: Path):
    done = search(
        app,
        "beta=tag(log, interval(0.001, 1))",
        "n=range(2,5)",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=4",
    )
    assert "batches of 2" in done.stdout
    assert results(app)["completed"] == 4


def test_a_stored_study_resumes(app: Path):
    storage = f"sqlite:///{app.parent / 'study.db'}"
    for _ in range(2):
        search(
            app,
            "beta=tag(log, interval(0.001, 1))",
            "n=range(2,5)",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=resume",
        )
    assert results(app)["trials"] == 4


def test_a_misnamed_objective_stops_the_search(app: Path):
    done = search(app, "beta=interval(0.001,1)", "hydra.sweeper.objective=final.valid.loss", check=False)
    assert done.returncode == 1
    assert "hydra.sweeper.objective=final.valid.loss: no 'valid'" in done.stdout


def test_the_results_file_is_the_one_vaecli_reads():
    from vaecli.runfolder.files import BEST_TRIAL_YAML

    assert RESULTS_NAME == BEST_TRIAL_YAML


def test_missing_optuna_names_the_extra(app: Path):
    argv = [str(app), "--multirun", "hydra/sweeper=optuna", "beta=interval(0.001,1)", f"hydra.sweep.dir={app.parent}/s"]
    blocked = (
        f"import runpy, sys; sys.modules['optuna'] = None; sys.argv = {argv!r}; "
        f"runpy.run_path({str(app)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "hydra/sweeper=optuna needs optuna, which is not installed: pip install 'vaecli[optuna]'" in done.stderr
