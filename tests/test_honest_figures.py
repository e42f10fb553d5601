"""Figures that say exactly what they are: held-out flags, what the nats are, no non-finite rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.conftest import invoke


def train(runner, tiny, run_dir, *overrides):
    result = invoke(runner, "train", *tiny, *overrides, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return result


def test_a_run_trained_on_the_test_images_says_so_in_every_evaluation_label(runner, tiny, tmp_path):
    run_dir = tmp_path / "all"
    train(runner, tiny, run_dir, "data.train_on=all", "eval.iwae_k=3")
    assert json.loads((run_dir / "evaluation.json").read_text())["setup"]["held_out"] is False
    assert json.loads((run_dir / "result.json").read_text())["evaluation"]["setup"]["held_out"] is False
    assert "test* (not held out" in (run_dir / "train.log").read_text()
    shown = invoke(runner, "evaluate", "-c", str(run_dir), "--k", "2", "--n", "16")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "test* (not held out) split" in text and "not held out: the model trained on these images" in text
    train_split = invoke(runner, "evaluate", "-c", str(run_dir), "--k", "2", "--n", "16", "--split", "train")
    assert json.loads((run_dir / "evaluation.json").read_text())["setup"]["held_out"] is False
    assert "train* (not held out) split" in " ".join(train_split.stdout.split())


def test_a_held_out_test_evaluation_says_held_out(trained_run, runner):
    assert invoke(runner, "evaluate", "-c", str(trained_run), "--k", "2", "--n", "16").exit_code == 0
    assert json.loads((trained_run / "evaluation.json").read_text())["setup"]["held_out"] is True


def test_continuous_bernoulli_nats_are_a_log_density_without_bits_per_dim(runner, tiny, tmp_path):
    run_dir = tmp_path / "cb"
    result = train(runner, tiny, run_dir, "model.likelihood=continuous_bernoulli", "eval.iwae_k=3")
    assert set(pd.read_csv(run_dir / "metrics.csv").nats_are) == {"log-density"}
    assert "nats are a log-density" in " ".join(result.stdout.split())
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["setup"]["nats_are"] == "log-density"
    assert report["bound"]["nll_bound_bits_per_dim"] is None and report["bound"]["neg_elbo_bits_per_dim"] is None
    shown = invoke(runner, "evaluate", "-c", str(run_dir), "--k", "2", "--n", "16")
    assert "not a probability of 8-bit images: no bits/dim" in " ".join(shown.stdout.split())


def test_no_dimension_is_active_and_collapsed_at_once(trained_run, runner):
    assert invoke(runner, "evaluate", "-c", str(trained_run), "--k", "2", "--n", "64").exit_code == 0
    dims = pd.read_csv(trained_run / "evaluation_dims.csv")
    assert not (dims.active & dims.collapsed).any()
    assert (dims.collapsed == ((dims.kl_nats < 0.01) & ~dims.active)).all()


def test_a_diverging_batched_member_writes_no_non_finite_figure_and_names_the_solo_step(runner, tiny, tmp_path):
    """lr=1e30: the test evaluation after step 1 overflows, alone and stacked (tests/test_run.py has it alone)."""
    sweep_dir = tmp_path / "sweep"
    result = invoke(
        runner, "sweep", *tiny, "train.lr=1e30", "beta=0,0.5", "hydra/launcher=batched", f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.exit_code == 1
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert set(table.status) == {"failed"}
    assert table.error.str.startswith(
        "TrainingDiverged: training diverged at the update of step 1 (the test evaluation after it gave "
    ).all()
    numbers = table.select_dtypes("number").to_numpy(dtype=float)
    assert not np.isinf(numbers).any()
    for member in table.member:
        rows = pd.read_csv(sweep_dir / member / "metrics.csv")
        values = rows.select_dtypes("number").to_numpy(dtype=float)
        assert np.isfinite(values[~np.isnan(values)]).all() and not rows.neg_elbo_nats.isna().any()
        assert list(rows.split) == ["train"]  # as the solo run: the broken test row is never written
    alone = invoke(runner, "train", *tiny, "train.lr=1e30", f"hydra.run.dir={tmp_path / 'alone'}")
    solo_error = json.loads((tmp_path / "alone" / "result.json").read_text())["error"]
    stacked_error = json.loads((sweep_dir / "beta=0" / "result.json").read_text())["error"]
    assert alone.exit_code == 1 and solo_error.split(" gave ")[0] == stacked_error.split(" gave ")[0]
