"""`vae evaluate` and `eval.iwae_k` end to end on small real slices: files, tables, bad input, old
checkpoints, binarised training runs and sweeps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from tests.conftest import invoke
from tests.test_inspection import BAD_FILES, assert_usage_error
from vaecli.config.schema import LATER_KEYS
from vaecli.data.tensors import binarize_split, load_split
from vaecli.objectives.beta import BetaElbo
from vaecli.runfolder import checkpoint

SETUP_KEYS = {"split", "images", "k", "likelihood", "binarize", "binary_pixels", "nats_are", "seed"}
BOUND_KEYS = {"k", "images", "nll_bound_nats", "nll_bound_se", "nll_bound_bits_per_dim", "neg_elbo_nats", "neg_elbo_se"}
LATENT_KEYS = {"latent_size", "active_units", "collapsed_dims", "kl_nats", "mutual_information_nats"}


def is_binary(images: torch.Tensor) -> bool:
    return bool(((images == 0) | (images == 1)).all())


def test_evaluate_writes_its_files_and_prints_what_the_numbers_mean(runner, trained_run):
    result = invoke(runner, "evaluate", "-c", str(trained_run), "--k", "20", "--n", "100", "--batch", "256")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # the tables wrap at the terminal's width
    for field in ("-ELBO (mean over the 20 draws)", "-IWAE_20", "active units", "collapsed onto the prior", "I(x; z)"):
        assert field in text, field
    assert "test split, 100 images, k=20" in text
    assert "8-bit pixel values" in text and "cross-entropy" in text  # the seed's data and decoder
    assert f"wrote {trained_run / 'evaluation.json'}" in result.stdout
    report = json.loads((trained_run / "evaluation.json").read_text())
    assert set(report["setup"]) >= SETUP_KEYS and set(report["bound"]) >= BOUND_KEYS
    assert set(report["latents"]) >= LATENT_KEYS
    setup, bound = report["setup"], report["bound"]
    assert (setup["images"], setup["k"], setup["latents_per_pass"]) == (100, 20, 256)
    assert (setup["binarize"], setup["nats_are"], setup["binary_pixels"]) == ("none", "cross-entropy", False)
    assert bound["nll_bound_nats"] <= bound["neg_elbo_nats"] and bound["nll_bound_se"] > 0
    assert math.isclose(bound["nll_bound_bits_per_dim"], bound["nll_bound_nats"] / (784 * math.log(2)))
    dims = pd.read_csv(trained_run / "evaluation_dims.csv")
    assert list(dims.dim) == list(range(10)) and {"kl_nats", "active", "collapsed"} <= set(dims.columns)
    assert dims.active.sum() == report["latents"]["active_units"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--k", "0"], "--k 0 is too small"),
        (["--n", "20000"], "--n 20000 is beyond the test split's 10000 images"),
        (["--n", "0"], "--n 0 is too small"),
        (["--split", "valid"], "--split valid is not one of test, train"),
        (["--batch", "0"], "--batch 0 is too small"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(runner, trained_run, arguments, message):
    assert_usage_error(invoke(runner, "evaluate", "-c", str(trained_run), *arguments), message)


@pytest.mark.parametrize(
    ("make", "message"),
    BAD_FILES,
    ids=["missing", "folder", "text", "truncated", "shape", "foreign", "configless", "newer", "extra"],
)
def test_a_missing_or_broken_checkpoint_is_one_line_and_exit_2(runner, trained_run, tmp_path, make, message):
    assert_usage_error(invoke(runner, "evaluate", "-c", str(make(trained_run, tmp_path)), "--k", "2"), message)


def test_a_checkpoint_from_before_binarize_and_likelihood_still_evaluates(runner, trained_run, tmp_path):
    payload = checkpoint.load(trained_run)
    for key in LATER_KEYS:
        section, _, name = key.rpartition(".")
        (payload["config"][section] if section else payload["config"]).pop(name)
    assert "binarize" not in payload["config"]["data"] and "likelihood" not in payload["config"]["model"]
    (tmp_path / "old").mkdir()
    torch.save(payload, tmp_path / "old" / "checkpoint.pt")
    result = invoke(runner, "evaluate", "-c", str(tmp_path / "old"), "--k", "5", "--n", "50")
    assert result.exit_code == 0, result.output
    setup = json.loads((tmp_path / "old" / "evaluation.json").read_text())["setup"]
    assert (setup["binarize"], setup["likelihood"], setup["nats_are"]) == ("none", "bernoulli", "cross-entropy")


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory, runner, tiny):
    """A tiny run on dynamically binarised MNIST with eval.iwae_k, recording every batch and test set it used."""
    run_dir = tmp_path_factory.mktemp("dynamic") / "run"
    batches, test_sets = [], []

    def backward(self, q, logits, x, *args, **kwargs):
        batches.append(x.clone())
        return backward_beta_elbo(self, q, logits, x, *args, **kwargs)

    def evaluate(self, model, images, *args, **kwargs):
        test_sets.append(images.clone())
        return original_evaluate(self, model, images, *args, **kwargs)

    backward_beta_elbo, original_evaluate = BetaElbo.backward, BetaElbo.evaluate
    overrides = ["train.steps=20", "train.shuffle=false", "data.binarize=dynamic", "eval.iwae_k=10"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BetaElbo, "backward", backward)
        patch.setattr(BetaElbo, "evaluate", evaluate)
        result = invoke(runner, "train", *tiny, *overrides, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir, result, batches, test_sets


def test_dynamic_binarisation_trains_on_fresh_binary_batches_and_one_fixed_binary_test_set(dynamic_run, data_root):
    run_dir, result, batches, test_sets = dynamic_run
    assert len(batches) == 20 and all(is_binary(x) for x in batches)
    # 512 images in batches of 32, in order: step 17 sees the images of step 1 again, drawn afresh
    assert not torch.equal(batches[0], batches[16])
    expected_test = binarize_split(load_split("mnist", data_root, train=False, limit=256).images, "dynamic", False)
    assert len(test_sets) >= 2 and all(torch.equal(images, expected_test) for images in test_sets)
    assert is_binary(expected_test)
    assert set(pd.read_csv(run_dir / "metrics.csv").nats_are) == {"log-likelihood"}
    assert "nats are a log-likelihood" in " ".join(result.stdout.split())
    rng = checkpoint.load(run_dir)["rng"]
    assert rng["binarize"].dtype == torch.uint8  # the per-batch draws' generator, for resuming exactly


def test_eval_iwae_k_puts_the_test_bound_into_result_json(dynamic_run):
    run_dir, result, _, _ = dynamic_run
    evaluation = json.loads((run_dir / "result.json").read_text())["evaluation"]
    assert evaluation == json.loads((run_dir / "evaluation.json").read_text())
    setup, bound = evaluation["setup"], evaluation["bound"]
    assert (setup["split"], setup["images"], setup["k"], setup["binarize"]) == ("test", 256, 10, "dynamic")
    assert setup["binary_pixels"] and setup["nats_are"] == "log-likelihood"
    assert bound["nll_bound_nats"] < bound["neg_elbo_nats"] < 1000
    assert 0 <= evaluation["latents"]["active_units"] <= 10
    assert "-IWAE_10" in result.stdout and (run_dir / "evaluation_dims.csv").is_file()


@pytest.mark.parametrize(
    ("launcher", "nats_are"),
    # batched with 2 threads: a forked helper writes some members' files (and the bound) too
    [([], "cross-entropy"), (["hydra/launcher=batched", "data.binarize=dynamic", "threads=2"], "log-likelihood")],
    ids=["basic-grey", "batched-dynamic"],
)
def test_a_sweep_reports_every_members_bound_and_active_units(runner, tiny, tmp_path, launcher, nats_are):
    sweep_dir = tmp_path / "sweep"
    overrides = [*tiny, "beta=0,0.5,1", "eval.iwae_k=5", *launcher, f"hydra.sweep.dir={sweep_dir}"]
    result = invoke(runner, "sweep", *overrides)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 3
    for column in ("test_nll_bound_nats", "test_nll_bound_se", "test_active_units", "iwae_k"):
        assert table[column].notna().all(), column
    assert set(table.nats_are) == {nats_are}  # grey levels under a Bernoulli decoder: a cross-entropy
    assert (table.test_nll_bound_nats <= table.test_neg_elbo_nats + 5).all()  # k=5 draws, tiny test slice
    assert (sweep_dir / "bound_active_units.png").stat().st_size > 1000
    assert "-IWAE" in result.stdout and nats_are in " ".join(result.stdout.split())
    for member in ("beta=0", "beta=0.5", "beta=1"):
        report = json.loads((sweep_dir / member / "evaluation.json").read_text())
        assert report["setup"]["k"] == 5 and report["setup"]["nats_are"] == nats_are
        assert json.loads((sweep_dir / member / "result.json").read_text())["evaluation"] == report  # as vae train
