"""Known-answer tests for the disentanglement metrics, on codes built from the factors of a small grid.

Sample sizes are small (hundreds to a few thousand points) so each test runs in seconds.
Invariances: MIG's equal-width bins over the observed range are invariant to positive affine maps of a dim
(not to general monotone maps); DCI with trees is invariant to strictly monotone maps (trees only see the
order of values, and importances come from the training split only); the FactorVAE score is invariant to
scaling a dim (it compares var / global var) while the dim stays above the pruning threshold.
SAP, explicitness and the beta-VAE score use linear models and are not invariant to monotone maps.
"""

import math

import numpy as np
import pytest

from vaecli.measure.disentanglement.grid import GridCodes
from vaecli.measure.disentanglement.interventions import beta_vae_score, factor_vae_score
from vaecli.measure.disentanglement.metrics import (
    chen_mig,
    dci,
    mig,
    modularity_explicitness,
    sap,
    weighted_specificity,
)

SIZES = (4, 3, 6, 8, 8)  # 4608 images
NAMES = ("f0", "f1", "f2", "f3", "f4")
CHANCE = float(np.mean([1 / s for s in SIZES]))
SMALL = {"points": 1000, "test_points": 500}


def grid_factors(sizes=SIZES) -> np.ndarray:
    """(N, k) class indices of every image in C order."""
    return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1).astype(float)


def make(loc: np.ndarray, sizes=SIZES, scale: float = 1e-3) -> GridCodes:
    names = tuple(f"f{k}" for k in range(len(sizes)))
    return GridCodes(loc, np.full(loc.shape, scale), sizes, names)


F = grid_factors()
FACTORS = make(F.copy())
NOISE = make(np.random.default_rng(1).normal(size=F.shape), scale=1.0)
MIXED = make(np.stack([F[:, 0] * 3 + F[:, 1], F[:, 2], F[:, 3], F[:, 4]], axis=1))  # invertible mix of f0, f1
SUMMED = make(np.stack([F[:, 0] + F[:, 1], F[:, 2], F[:, 3], F[:, 4]], axis=1))  # lossy mix of f0, f1
SPREAD = make(np.stack([F[:, 0] // 2, F[:, 0] % 2, F[:, 1], F[:, 2], F[:, 3], F[:, 4]], axis=1))  # f0 over 2 dims


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- GridCodes ---------------------------------------------------------------------------------------------


def test_sample_matches_unravel_index():
    x, f = FACTORS.sample(500, rng())
    assert np.array_equal(x, f)
    index = np.array([0, 1, 7, 4607])
    assert np.array_equal(FACTORS.factors(index), np.stack(np.unravel_index(index, SIZES), axis=1))
    assert np.array_equal(FACTORS.index_of(FACTORS.factors(index)), index)


def test_fixed_holds_factor_and_varies_others():
    for k in range(len(SIZES)):
        codes = FACTORS.fixed(k, SIZES[k] - 1, 200, rng(k))
        assert codes.shape == (200, len(SIZES))
        assert np.all(codes[:, k] == SIZES[k] - 1)
        others = np.delete(codes, k, axis=1)
        assert all(len(np.unique(col)) == s for col, s in zip(others.T, np.delete(SIZES, k)))


def test_grid_rejects_bad_shapes():
    with pytest.raises(ValueError):
        GridCodes(np.zeros((10, 2)), np.zeros((10, 2)), SIZES, NAMES)


# --- MIG ---------------------------------------------------------------------------------------------------


def test_mig_factors_and_noise():
    good = mig(FACTORS, rng(), points=2000)
    # Every factor here has <= 20 values, so binning is lossless; the gap falls short of 1 only by the
    # plug-in MI bias of the runner-up dim (~(a-1)(b-1)/2n nats). Seen: 0.994.
    assert 0.98 < good["mig"] < 1.0
    assert good["points"] == 2000 and good["bins"] == 20 and good["codes"] == "posterior means"
    assert mig(NOISE, rng(), points=2000)["mig"] < 0.02  # seen: 0.002


def test_mig_many_values_lose_to_binning():
    # 40 classes over 20 equal-width bins: classes pair up exactly, so MI = log 20 and MIG -> log 20 / log 40.
    sizes = (40, 3)
    result = mig(make(grid_factors(sizes), sizes), rng(), points=4000)
    assert result["per_factor"][0] == pytest.approx(math.log(20) / math.log(40), abs=0.015)


def test_mig_mixed_and_spread():
    mixed = mig(MIXED, rng(), points=2000)["per_factor"]
    # An invertible mix keeps all of f0 and f1 in dim 0 and no other dim has them: MIG does not penalise it.
    assert min(mixed[:2]) > 0.97
    summed = mig(SUMMED, rng(), points=4000)["per_factor"]
    # dim0 = f0 + f1 loses information: I(f0+f1; f0) / log 4 = 0.437 and I(f0+f1; f1) / log 3 = 0.289 exactly.
    h_sum = -sum(c / 12 * math.log(c / 12) for c in (1, 2, 3, 3, 2, 1))
    assert summed[0] == pytest.approx((h_sum - math.log(3)) / math.log(4), abs=0.02)
    assert summed[1] == pytest.approx((h_sum - math.log(4)) / math.log(3), abs=0.02)
    spread = mig(SPREAD, rng(), points=2000)["per_factor"]
    assert spread[0] < 0.03 and min(spread[1:]) > 0.98  # f0 = (dim0, dim1), log 2 each: gap 0


def test_mig_affine_invariant():
    loc = MIXED.loc.copy()
    loc[:, 0] = 3 * loc[:, 0] + 5
    assert np.allclose(mig(make(loc), rng(), points=2000)["mi"], mig(MIXED, rng(), points=2000)["mi"])


# --- Chen et al. MIG ---------------------------------------------------------------------------------------


def test_chen_mig_factors_and_noise():
    good = chen_mig(FACTORS, rng(), points=2000)
    hist = mig(FACTORS, rng(1), points=2000)
    # Tiny scales on shared code values: I(z_k; v_k) is the plug-in H(v_k), as the histogram MI.
    assert np.allclose(np.diag(good["mi"]), np.diag(hist["mi"]), atol=0.02)
    assert good["chen_mig"] > 0.98  # seen: 0.994
    no_f0 = chen_mig(FACTORS, rng(), points=1000, factors=["f1", 2, 3, 4])
    assert no_f0["factors"] == ["f1", "f2", "f3", "f4"] and len(no_f0["per_factor"]) == 4
    assert chen_mig(NOISE, rng(), points=2000)["chen_mig"] < 0.01  # seen: 0.0006


def test_chen_mig_matches_gaussian_channel_quadrature():
    sizes, a, sigma = (4, 5), 1.0, 0.5
    f = grid_factors(sizes)
    u = (f[:, 0] - 1.5) / math.sqrt(1.25)
    codes = GridCodes(
        np.stack([a * u, f[:, 1]], 1), np.stack([np.full(len(f), sigma), np.full(len(f), 1e-3)], 1), sizes, ("v", "w")
    )
    means = a * (np.arange(4) - 1.5) / math.sqrt(1.25)
    z = np.linspace(means.min() - 10 * sigma, means.max() + 10 * sigma, 20001)
    p = np.exp(-0.5 * ((z[:, None] - means) / sigma) ** 2).mean(1) / (sigma * math.sqrt(2 * math.pi))
    exact = -np.trapezoid(p * np.log(p), z) - 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    estimate = chen_mig(codes, rng(), points=3000)["mi"][0][0]
    assert estimate == pytest.approx(exact, abs=0.03)  # exact 0.765 nats; seen 0.769


# --- DCI ---------------------------------------------------------------------------------------------------


def test_dci_factors_and_noise():
    good = dci(FACTORS, rng(), **SMALL)
    assert good["disentanglement"] > 0.99 and good["completeness"] > 0.99 and good["informativeness"] > 0.99
    assert good["learner"] == "GradientBoostingClassifier, as disentanglement_lib"
    bad = dci(NOISE, rng(), **SMALL)
    assert bad["disentanglement"] < 0.05 and bad["completeness"] < 0.05  # seen: 0.005, 0.006
    # Noise codes are still a fixed function of the image: test images also drawn for training
    # (1 - exp(-1000/4608) ~ 20%) are memorised, so accuracy sits between chance (0.2) and train accuracy.
    assert bad["informativeness"] < 0.45


def test_dci_mixed_spread_and_monotone_invariance():
    mixed = dci(MIXED, rng(), **SMALL)
    assert mixed["disentanglement"] < 0.9 and mixed["completeness"] > 0.95
    warped = MIXED.loc.copy()
    warped[:, 0], warped[:, 2] = np.exp(warped[:, 0] / 3), warped[:, 2] ** 3
    again = dci(make(warped), rng(), **SMALL)
    assert np.allclose(again["importance"], mixed["importance"])
    assert again["informativeness"] == pytest.approx(mixed["informativeness"])
    spread = dci(SPREAD, rng(), **SMALL)
    assert spread["disentanglement"] > 0.95 and spread["completeness_per_factor"][0] < 0.8


def test_the_fast_dci_learner_agrees_with_the_boosted_trees_on_known_codes():
    fast = dci(FACTORS, rng(), points=600, test_points=300, learner="fast")
    assert fast["disentanglement"] > 0.99 and fast["completeness"] > 0.99 and fast["informativeness"] > 0.99
    assert fast["learner"].startswith("GradientBoostingClassifier, 20 stages at learning rate 0.5 (fast DCI")
    noise = dci(NOISE, rng(), points=600, test_points=300, learner="fast")
    assert noise["disentanglement"] < 0.2 and noise["completeness"] < 0.2
    exact, quick = dci(MIXED, rng(), **SMALL), dci(MIXED, rng(), **SMALL, learner="fast")
    for key in ("disentanglement", "completeness", "informativeness"):  # where the two mixed factors land
        assert quick[key] == pytest.approx(exact[key], abs=0.05), key


def test_weighted_specificity_closed_forms():
    assert weighted_specificity(np.eye(3))[0] == pytest.approx(1.0)
    assert weighted_specificity(np.ones((3, 3)))[0] == pytest.approx(0.0, abs=1e-9)
    assert weighted_specificity(np.array([[1.0, 1.0], [0.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)


# --- SAP ---------------------------------------------------------------------------------------------------


def test_sap_factors_above_noise():
    good = sap(FACTORS, rng(), points=2000, test_points=1000)
    bad = sap(NOISE, rng(), points=2000, test_points=1000)
    # A linear classifier on one ordinal dim picks out the end values only, so SAP is far below 1 even for
    # perfect codes (seen: 0.39; binary-ish factors reach more, 8-value ones ~0.23). Noise seen: 0.011.
    assert 0.3 < good["sap"] < 0.6 and bad["sap"] < 0.05
    constant = make(np.concatenate([F, np.zeros((len(F), 1))], axis=1))
    assert np.all(np.array(sap(constant, rng(), points=500, test_points=300)["score_matrix"])[-1] == 0)


# --- Modularity and explicitness ---------------------------------------------------------------------------


def test_modularity_explicitness():
    good = modularity_explicitness(FACTORS, rng(), points=2000, test_points=1000)
    assert good["modularity"] > 0.99 and good["explicitness"] > 0.99
    bad = modularity_explicitness(NOISE, rng(), points=2000, test_points=1000)
    # Modularity of noise is not near 0: it normalises by each dim's own (tiny, biased) largest MI. Seen: 0.62.
    assert bad["modularity"] < 0.8 and bad["explicitness"] < 0.56  # chance AUC 0.5; seen 0.51
    mixed = modularity_explicitness(MIXED, rng(), points=2000, test_points=1000)["modularity_per_code"]
    # dim0 carries log 4 (f0) and log 3 (f1): 1 - (log 3)^2 / ((log 4)^2 * 4) = 0.843.
    assert mixed[0] == pytest.approx(1 - math.log(3) ** 2 / (math.log(4) ** 2 * 4), abs=0.02)
    assert min(mixed[1:]) > 0.98


# --- FactorVAE and beta-VAE scores -------------------------------------------------------------------------

VOTES = {"train_votes": 300, "eval_votes": 300, "variance_points": 2000}


def test_factor_vae_score():
    assert factor_vae_score(FACTORS, rng(), **VOTES)["factor_vae_score"] == 1.0
    noise = factor_vae_score(NOISE, rng(), **VOTES)
    assert noise["factor_vae_score"] < 0.3  # chance 1/5 (uniform factor choice); seen 0.22
    scaled = NOISE.loc.copy()
    scaled[:, 0] *= 7.0
    assert factor_vae_score(make(scaled), rng(), **VOTES)["train_table"] == noise["train_table"]
    pruned = factor_vae_score(make(F * 1e-3), rng(), **VOTES)
    assert pruned["factor_vae_score"] == 0.0 and "pruned" in pruned["note"]


def test_beta_vae_score():
    assert beta_vae_score(FACTORS, rng(), train_points=500, eval_points=300)["beta_vae_score"] == 1.0
    assert beta_vae_score(NOISE, rng(), train_points=500, eval_points=300)["beta_vae_score"] < 0.3  # seen 0.23


def test_the_sweep_figure_draws_every_metric_against_beta_and_latent_size(tmp_path):
    """Ten panels (two columns: one was too tall for plotnine), one line per latent size."""
    import pandas as pd
    from PIL import Image

    from vaecli.inspect.plots import disentanglement_against, factor
    from vaecli.sweep.report import DISENTANGLEMENT_COLUMNS

    betas, sizes = [0.00244140625, 0.0048828125, 0.009765625], [4, 10]
    rows = [{"beta": b, "latent_size": z} for b in betas for z in sizes]
    table = pd.DataFrame(rows)
    for number, column in enumerate(DISENTANGLEMENT_COLUMNS):
        table[column] = np.linspace(0.1, 0.9, len(table)) ** (number + 1)
    table["dci_learner"] = "GradientBoostingClassifier, 20 stages at learning rate 0.5 (fast DCI; ...)"
    path = disentanglement_against(table, tmp_path / "disentanglement.png", "beta", "latent_size")
    with Image.open(path) as image:
        width, height = image.size
    assert width > 1000 and height < 2 * width  # two columns of panels, not one tall strip
    assert list(factor(table, "beta").categories) == ["0.002441", "0.004883", "0.009766"]
