"""Disentanglement metrics of Locatello et al. (2019, disentanglement_lib) on codes of a full factor grid.

Every metric returns its value(s) together with every setting it used (sample sizes, bins, learner and its
parameters), so a caller can store the settings beside the number. The intervention-based scores (FactorVAE,
beta-VAE) live in ``interventions.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.svm import LinearSVC

from vaecli.measure.disentanglement.grid import CODES, GridCodes

# The fast DCI: a fifth of the stages at five times the learning rate, so the total shrinkage
# (stages x rate = 10) is disentanglement_lib's. On the beta study's codes this kept D and C within
# 0.03 of the exact ones and I within 0.05, where 10 stages at 0.1 doubled D (docs/disentanglement.md).
FAST_STAGES, FAST_RATE = 20, 0.5
BOOSTING = {
    "gbt": {"n_estimators": 100, "learning_rate": 0.1},
    "fast": {"n_estimators": FAST_STAGES, "learning_rate": FAST_RATE},
}
LEARNERS = {
    "gbt": "GradientBoostingClassifier, as disentanglement_lib",
    "fast": f"GradientBoostingClassifier, {FAST_STAGES} stages at learning rate {FAST_RATE} "
    "(fast DCI; disentanglement_lib's: 100 at 0.1)",
}


def _seed(rng: np.random.Generator) -> int:
    """An integer seed for sklearn learners, drawn from rng so runs are reproducible."""
    return int(rng.integers(0, 2**31 - 1))


def discretize(x: np.ndarray, bins: int) -> np.ndarray:
    """Each column into `bins` equal-width bins over its observed range (np.histogram edges, np.digitize)."""
    out = np.zeros(x.shape, dtype=np.int64)
    for i in range(x.shape[1]):
        edges = np.histogram(x[:, i], bins)[1]
        out[:, i] = np.digitize(x[:, i], edges[:-1])
    return out


def mi_matrix(binned: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Discrete mutual information (nats), (d, k), between binned code dims and factors."""
    return np.array(
        [
            [mutual_info_score(factors[:, k], binned[:, i]) for k in range(factors.shape[1])]
            for i in range(binned.shape[1])
        ]
    )


def _gap(scores: np.ndarray) -> np.ndarray:
    """Per column (factor): largest minus second largest entry over rows (code dims)."""
    ordered = np.sort(scores, axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(scores.shape[1])
    return ordered[0] - second


def mig(codes: GridCodes, rng: np.random.Generator, points: int = 10_000, bins: int = 20) -> dict:
    """Mutual Information Gap with histogram MI, as disentanglement_lib: mean over factors of gap / H(factor)."""
    x, f = codes.sample(points, rng)
    mi = mi_matrix(discretize(x, bins), f)
    entropy = np.array([mutual_info_score(f[:, k], f[:, k]) for k in range(f.shape[1])])
    per_factor = _gap(mi) / entropy
    return {
        "mig": float(per_factor.mean()),
        "per_factor": per_factor.tolist(),
        "factors": list(codes.names),
        "mi": mi.tolist(),
        "factor_entropy": entropy.tolist(),
        "points": points,
        "bins": bins,
        "discretisation": "equal-width bins over each dim's observed range (np.histogram edges, np.digitize)",
        "mi_estimator": "sklearn.metrics.mutual_info_score (plug-in, nats)",
        "codes": CODES,
    }


def _mixture_entropy(z: np.ndarray, loc: np.ndarray, scale: np.ndarray, max_elements: int) -> np.ndarray:
    """Per-dim entropy -mean_s log((1/n) sum_n N(z_s; loc_n, scale_n)), chunked so memory stays bounded."""
    zt, mu = torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(loc, dtype=torch.float64)
    inv = 1.0 / torch.as_tensor(scale, dtype=torch.float64)
    const = torch.log(inv) - 0.5 * math.log(2 * math.pi)
    n, d = mu.shape
    step = max(1, max_elements // (n * d))
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, len(zt), step):
        diff = (zt[start : start + step, None, :] - mu) * inv
        total += torch.logsumexp(const - 0.5 * diff * diff, dim=1).sum(0)
    return (math.log(n) - total / len(zt)).numpy()


def _factor_indices(codes: GridCodes, factors: Sequence[int | str] | None) -> list[int]:
    """Factor selection by index or name; None means all."""
    if factors is None:
        return list(range(len(codes.sizes)))
    return [codes.names.index(f) if isinstance(f, str) else int(f) for f in factors]


def chen_mig(
    codes: GridCodes,
    rng: np.random.Generator,
    points: int = 10_000,
    factors: Sequence[int | str] | None = None,
    max_elements: int = 2**22,
) -> dict:
    """Chen et al. (2018) MIG from q(z|x): entropies of the sampled posterior mixture, not histograms.

    The mixture includes each sample's own posterior, so for near-deterministic codes whose values differ
    between images the estimate saturates at H(v_k); it needs overlapping posteriors or shared code values.
    """
    chosen = _factor_indices(codes, factors)
    if any(codes.sizes[k] < 2 for k in chosen):
        raise ValueError("chen_mig normalises by log(size); every chosen factor needs at least 2 values")
    index = codes.sample_index(points, rng)
    loc, scale = codes.loc[index].astype(np.float64), codes.scale[index].astype(np.float64)
    if np.any(scale <= 0):
        raise ValueError("posterior scales must be positive")
    z = loc + scale * rng.standard_normal(loc.shape)
    f = codes.factors(index)
    h_z = _mixture_entropy(z, loc, scale, max_elements)
    mi = np.zeros((loc.shape[1], len(chosen)))
    for col, k in enumerate(chosen):
        conditional = np.zeros(loc.shape[1])
        for v in np.unique(f[:, k]):
            mask = f[:, k] == v
            conditional += mask.mean() * _mixture_entropy(z[mask], loc[mask], scale[mask], max_elements)
        mi[:, col] = h_z - conditional
    entropy = np.log(np.asarray(codes.sizes, dtype=np.float64)[chosen])
    per_factor = _gap(mi) / entropy
    return {
        "chen_mig": float(per_factor.mean()),
        "per_factor": per_factor.tolist(),
        "factors": [codes.names[k] for k in chosen],
        "mi": mi.tolist(),
        "code_entropy": h_z.tolist(),
        "factor_entropy": entropy.tolist(),
        "points": points,
        "estimator": "one z ~ q(z|x) per sampled image; entropies of the Gaussian mixture of the sampled posteriors",
        "normalisation": "log(size) (uniform factors)",
        "codes": "posterior samples (loc + scale * noise)",
    }


def _fit_factor(learner: str, x_tr, y_tr, x_te, y_te, seed: int) -> tuple[np.ndarray, float, float]:
    """One factor's classifier: (importance per code dim, train accuracy, test accuracy)."""
    model = GradientBoostingClassifier(random_state=seed, **BOOSTING[learner]).fit(x_tr, y_tr)
    importance = np.abs(model.feature_importances_)
    return importance, float(np.mean(model.predict(x_tr) == y_tr)), float(np.mean(model.predict(x_te) == y_te))


def is_fast_dci(learner: str) -> bool:
    """Whether a DCI result's ``learner`` is the fast one, which every figure of it must then say."""
    return "fast DCI" in learner


def weighted_specificity(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """sum_i rho_i (1 - H(P_i.)) over rows of a non-negative matrix, entropy base = row length; and per row."""
    base = matrix.shape[1]
    total = matrix.sum()
    if base < 2 or total <= 0:
        per_row = np.ones(matrix.shape[0]) if base < 2 else np.zeros(matrix.shape[0])
        return (float(per_row.mean()) if total > 0 else 0.0), per_row
    p = matrix + 1e-11
    p = p / p.sum(axis=1, keepdims=True)
    per_row = 1.0 + (p * np.log(p)).sum(axis=1) / math.log(base)
    return float(np.sum(matrix.sum(axis=1) / total * per_row)), per_row


def dci(
    codes: GridCodes,
    rng: np.random.Generator,
    points: int = 10_000,
    test_points: int = 5_000,
    learner: str = "gbt",
    workers: int = 2,
) -> dict:
    """DCI (Eastwood & Williams 2018) with one tree ensemble per factor, as disentanglement_lib."""
    if learner not in LEARNERS:
        raise ValueError(f"learner must be one of {sorted(LEARNERS)}")
    x_tr, f_tr = codes.sample(points, rng)
    x_te, f_te = codes.sample(test_points, rng)
    seeds = [_seed(rng) for _ in codes.sizes]
    fits = Parallel(n_jobs=workers)(
        delayed(_fit_factor)(learner, x_tr, f_tr[:, k], x_te, f_te[:, k], seeds[k]) for k in range(len(codes.sizes))
    )
    importance = np.stack([fit[0] for fit in fits], axis=1)
    disentanglement, per_code = weighted_specificity(importance)
    completeness, per_factor = weighted_specificity(importance.T)
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(np.mean([fit[2] for fit in fits])),
        "informativeness_train": float(np.mean([fit[1] for fit in fits])),
        "disentanglement_per_code": per_code.tolist(),
        "completeness_per_factor": per_factor.tolist(),
        "test_accuracy_per_factor": [fit[2] for fit in fits],
        "importance": importance.tolist(),
        "factors": list(codes.names),
        "points": points,
        "test_points": test_points,
        "learner": LEARNERS[learner],
        "learner_params": {"defaults": True, **BOOSTING[learner]},
        "codes": CODES,
    }


def sap(
    codes: GridCodes, rng: np.random.Generator, points: int = 10_000, test_points: int = 5_000, c: float = 0.01
) -> dict:
    """SAP (Kumar et al. 2018): per factor, gap between the two code dims that best predict it alone."""
    x_tr, f_tr = codes.sample(points, rng)
    x_te, f_te = codes.sample(test_points, rng)
    scores = np.zeros((x_tr.shape[1], f_tr.shape[1]))
    unconverged = 0
    for i in range(x_tr.shape[1]):
        if np.ptp(x_tr[:, i]) == 0:
            continue  # a constant dim predicts nothing: score 0
        for k in range(f_tr.shape[1]):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf = LinearSVC(C=c, class_weight="balanced", random_state=_seed(rng)).fit(
                    x_tr[:, i : i + 1], f_tr[:, k]
                )
            unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            scores[i, k] = np.mean(clf.predict(x_te[:, i : i + 1]) == f_te[:, k])
    per_factor = _gap(scores)
    return {
        "sap": float(per_factor.mean()),
        "per_factor": per_factor.tolist(),
        "factors": list(codes.names),
        "score_matrix": scores.tolist(),
        "points": points,
        "test_points": test_points,
        "learner": "LinearSVC on one code dim, test accuracy",
        "learner_params": {"C": c, "class_weight": "balanced"},
        "unconverged_fits": unconverged,
        "codes": CODES,
    }


def modularity_from_mi(mi: np.ndarray) -> np.ndarray:
    """Per code dim 1 - deviation from one-factor MI; a dim with zero MI everywhere gets 0 (disentanglement_lib)."""
    squared = mi**2
    top = squared.max(axis=1)
    if mi.shape[1] < 2:
        return np.where(top > 0, 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = (squared.sum(axis=1) - top) / (top * (mi.shape[1] - 1))
    return np.where(top > 0, 1.0 - deviation, 0.0)


def _macro_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest ROC AUC per value, averaged; values absent (or alone) in y are skipped."""
    aucs = []
    for col, cls in enumerate(classes):
        target = y == cls
        if target.any() and not target.all():
            aucs.append(roc_auc_score(target, proba[:, col]))
    return float(np.mean(aucs))


def modularity_explicitness(
    codes: GridCodes,
    rng: np.random.Generator,
    points: int = 10_000,
    test_points: int = 5_000,
    bins: int = 20,
    logistic: dict | None = None,
) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018) as disentanglement_lib computes them."""
    params = {"C": 1.0, "max_iter": 1000} if logistic is None else dict(logistic)
    x_tr, f_tr = codes.sample(points, rng)
    x_te, f_te = codes.sample(test_points, rng)
    mi = mi_matrix(discretize(x_tr, bins), f_tr)
    per_code = modularity_from_mi(mi)
    train_auc, test_auc = [], []
    for k in range(f_tr.shape[1]):
        clf = LogisticRegression(**params).fit(x_tr, f_tr[:, k])
        train_auc.append(_macro_auc(f_tr[:, k], clf.predict_proba(x_tr), clf.classes_))
        test_auc.append(_macro_auc(f_te[:, k], clf.predict_proba(x_te), clf.classes_))
    return {
        "modularity": float(per_code.mean()),
        "modularity_per_code": per_code.tolist(),
        "explicitness": float(np.mean(test_auc)),
        "explicitness_train": float(np.mean(train_auc)),
        "explicitness_per_factor": test_auc,
        "mi": mi.tolist(),
        "factors": list(codes.names),
        "points": points,
        "test_points": test_points,
        "bins": bins,
        "learner": "LogisticRegression (lbfgs, multinomial) on all code dims; one-vs-rest ROC AUC per value",
        "learner_params": params,
        "codes": CODES,
    }
