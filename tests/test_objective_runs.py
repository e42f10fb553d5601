"""Every objective end to end: a real run, its columns, its evaluation, a resume and a batched sweep."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from tests.conftest import invoke
from vaecli.runfolder import checkpoint

OWN_COLUMNS = {
    "beta": [],
    "capacity": ["capacity_nats", "kl_gap_nats"],
    "tcvae": ["mi_nats", "tc_nats", "dim_kl_nats"],
    "factor": ["tc_nats", "disc_loss", "disc_accuracy"],
    "dip": ["dip_off_diagonal", "dip_diagonal"],
}
SMALL_FACTOR = ["objective.disc_layers=2", "objective.disc_units=64"]


@pytest.mark.parametrize("name", list(OWN_COLUMNS))
def test_every_objective_trains_shows_its_terms_and_is_evaluated(runner, tiny, tmp_path, name):
    run_dir = tmp_path / name
    extra = SMALL_FACTOR if name == "factor" else []
    result = invoke(
        runner, "train", *tiny, f"objective={name}", "objective.warmup_steps=4", *extra, f"hydra.run.dir={run_dir}"
    )
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(run_dir / "metrics.csv")
    own = [*OWN_COLUMNS[name], "kl_weight"]
    assert list(metrics.columns[10 : 10 + len(own)]) == own  # after the ELBO columns
    values = metrics[["loss", "neg_elbo_nats", *own]].to_numpy()
    assert all(math.isfinite(value) for value in values.ravel())
    train = metrics[metrics.split == "train"]
    assert list(train.kl_weight) == [min(1.0, step / 4) for step in train.step]
    # the ELBO columns keep their meaning: recon + kl per image
    assert (metrics.neg_elbo_nats - metrics.recon_nats - metrics.kl_nats).abs().max() < 1e-3
    evaluated = invoke(runner, "evaluate", "-c", str(run_dir), "--k", "8", "--n", "64")
    assert evaluated.exit_code == 0, evaluated.output


def weights(run_dir):
    return checkpoint.load(run_dir)["model"]


def test_a_resumed_factor_run_equals_an_uninterrupted_one(runner, tiny, tmp_path):
    """Its discriminator and the discriminator's Adam are in the checkpoint."""
    base = [*tiny, "objective=factor", *SMALL_FACTOR, "train.eval_every=0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert invoke(runner, "train", *base, "train.steps=16", f"hydra.run.dir={whole}").exit_code == 0
    assert invoke(runner, "train", *base, "train.steps=8", f"hydra.run.dir={parts}").exit_code == 0
    assert invoke(runner, "train", "--resume", str(parts), "train.steps=16").exit_code == 0
    for key, value in weights(whole).items():
        assert torch.equal(value, weights(parts)[key]), key
    one, other = checkpoint.load(whole)["objective"], checkpoint.load(parts)["objective"]
    for key, value in one["discriminator"].items():
        assert torch.equal(value, other["discriminator"][key]), key
    rows = [pd.read_csv(f / "metrics.csv").query("split == 'train'").reset_index(drop=True) for f in (whole, parts)]
    timing = ["images_per_s", "seconds"]
    pd.testing.assert_frame_equal(rows[0].drop(columns=timing), rows[1].drop(columns=timing))


def test_a_batched_sweep_over_two_objectives(runner, tiny, tmp_path):
    """Members that differ in the objective's weights share a stacked group; another objective splits it."""
    sweep_dir = tmp_path / "sweep"
    result = invoke(
        runner,
        "sweep",
        *tiny,
        "hydra/launcher=batched",
        "objective=beta,tcvae",
        "objective.warmup_steps=0,4",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert sorted(table.objective) == ["beta", "beta", "tcvae", "tcvae"] and set(table.status) == {"ok"}
    assert table[table.objective == "tcvae"].train_tc_nats.notna().all()
    groups = [sorted(group["members"]) for group in json.loads((sweep_dir / "groups.json").read_text())["groups"]]
    assert len(groups) == 2 and all(len(group) == 2 for group in groups)
    kinds = {frozenset("tcvae" in member for member in group) for group in groups}
    assert kinds == {frozenset([True]), frozenset([False])}  # each group of one objective


@pytest.mark.parametrize(
    "overrides",
    [["objective=capacity", "objective.gamma=10,100"], ["objective=factor", *SMALL_FACTOR, "objective.gamma=5,40"]],
    ids=["capacity", "factor"],
)
def test_a_stacked_member_trains_as_its_solo_run(runner, tiny, tmp_path, overrides):
    """Each member's objective on its slice of the stacks: its rows and weights are its solo run's, to float
    rounding (the stacked products sum in another order); FactorVAE's discriminator draws from its own streams."""
    swept = next(item for item in overrides if "," in item)
    key, values = swept.split("=")
    fixed = [item for item in overrides if item != swept]
    sweep_dir = tmp_path / "sweep"
    batched = invoke(runner, "sweep", *tiny, "hydra/launcher=batched", *overrides, f"hydra.sweep.dir={sweep_dir}")
    assert batched.exit_code == 0, batched.output
    for value in values.split(","):
        solo = tmp_path / f"solo{value}"
        assert invoke(runner, "train", *tiny, *fixed, f"{key}={value}", f"hydra.run.dir={solo}").exit_code == 0
        [member] = [path for path in sweep_dir.iterdir() if path.name == f"{key}={value}"]
        timing = ["images_per_s", "seconds"]
        alone, stacked = (pd.read_csv(path / "metrics.csv").drop(columns=timing) for path in (solo, member))
        pd.testing.assert_frame_equal(alone, stacked, rtol=1e-5)
        for name, weight in weights(solo).items():
            torch.testing.assert_close(weight, weights(member)[name], rtol=0, atol=1e-5)


def test_an_objectives_own_terms_reach_tensorboard():
    from vaecli.run.tensorboard_log import scalar_tags

    row = {"step": 4, "epoch": 0.5, "split": "train", "held_out": False, "loss": 0.3, "tc_nats": 0.25, "nats_are": "x"}
    assert scalar_tags(row) == {"train/loss": 0.3, "train/tc_nats": 0.25}


def test_a_resume_refuses_another_objective_or_its_settings_in_one_line(runner, tiny, tmp_path):
    run_dir = tmp_path / "run"
    assert invoke(runner, "train", *tiny, "objective=capacity", f"hydra.run.dir={run_dir}").exit_code == 0
    before = (run_dir / "metrics.csv").read_bytes()
    other = invoke(runner, "train", "--resume", str(run_dir), "objective=tcvae", "train.steps=16")
    assert other.exit_code == 2 and "objective=tcvae cannot replace the run's objective=capacity" in other.stderr
    weight = invoke(runner, "train", "--resume", str(run_dir), "objective.gamma=5", "train.steps=16")
    assert weight.exit_code == 2 and "objective.gamma cannot change when resuming" in weight.stderr
    assert (run_dir / "metrics.csv").read_bytes() == before


def test_a_run_from_before_warm_up_and_free_bits_continues(runner, tiny, tmp_path):
    """Its checkpoint's objective is {name: beta} alone: the keys added later take their defaults."""
    from vaecli.runfolder.checkpoint import atomic_save

    run_dir = tmp_path / "run"
    assert invoke(runner, "train", *tiny, f"hydra.run.dir={run_dir}").exit_code == 0
    payload = checkpoint.load(run_dir)
    payload["config"]["objective"] = {"name": "beta"}
    atomic_save(payload, run_dir / "checkpoint.pt")
    result = invoke(runner, "train", "--resume", str(run_dir), "train.steps=16")
    assert result.exit_code == 0, result.output
    assert checkpoint.load(run_dir)["step"] == 16


def test_tcvae_evaluates_a_test_split_of_one_image_and_dip_penalties_stay_non_negative(runner, tiny, tmp_path):
    test_one = [item for item in tiny if not item.startswith("data.test_limit=")] + ["data.test_limit=1"]
    result = invoke(runner, "train", *test_one, "objective=tcvae", f"hydra.run.dir={tmp_path / 'tcvae'}")
    assert result.exit_code == 0, result.output
    dip = invoke(runner, "train", *tiny, "objective=dip", "objective.variant=ii", f"hydra.run.dir={tmp_path / 'dip'}")
    assert dip.exit_code == 0 and (pd.read_csv(tmp_path / "dip" / "metrics.csv").dip_off_diagonal >= 0).all()
