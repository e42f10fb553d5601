"""Intervention-based disentanglement scores (FactorVAE, beta-VAE) as disentanglement_lib defines them.

Both hold one factor fixed across a batch of images and ask which code dims reveal which factor.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from vaecli.measure.disentanglement.grid import CODES, GridCodes

CHUNK = 1000  # votes or points built at once, to bound memory at CHUNK * batch * d floats


def _votes(
    codes: GridCodes, rng: np.random.Generator, n: int, batch: int, kept: np.ndarray, global_var: np.ndarray
) -> np.ndarray:
    """Vote table (k, d): per vote the kept dim of least normalised variance when one factor is fixed."""
    sizes = np.asarray(codes.sizes)
    table = np.zeros((len(sizes), codes.loc.shape[1]), dtype=np.int64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        factor = rng.integers(0, len(sizes), size=m)
        value = rng.integers(0, sizes[factor])
        x = codes.loc[codes.fixed_index(factor, value, batch, rng)][:, :, kept]
        ratio = np.var(x, axis=1, ddof=1) / global_var[kept]
        np.add.at(table, (factor, kept[np.argmin(ratio, axis=1)]), 1)
    return table


def factor_vae_score(
    codes: GridCodes,
    rng: np.random.Generator,
    batch: int = 64,
    train_votes: int = 10_000,
    eval_votes: int = 5_000,
    variance_points: int = 10_000,
    prune_std: float = 0.05,
) -> dict:
    """FactorVAE score (Kim & Mnih 2018): majority-vote accuracy of 'least-varying dim -> fixed factor'."""
    x, _ = codes.sample(variance_points, rng)
    global_var = np.var(x, axis=0, ddof=1)
    kept = np.flatnonzero(np.sqrt(global_var) >= prune_std)
    result = {
        "batch": batch,
        "train_votes": train_votes,
        "eval_votes": eval_votes,
        "variance_points": variance_points,
        "prune_std": prune_std,
        "kept_dims": kept.tolist(),
        "factors": list(codes.names),
        "codes": CODES,
    }
    if kept.size == 0:
        return {"factor_vae_score": 0.0, "train_accuracy": 0.0, "note": "all code dims pruned: score 0", **result}
    train = _votes(codes, rng, train_votes, batch, kept, global_var)
    evaluation = _votes(codes, rng, eval_votes, batch, kept, global_var)
    rule = np.argmax(train, axis=0)  # per code dim, its majority factor (factor 0 for a dim that never won)
    dims = np.arange(train.shape[1])
    return {
        "factor_vae_score": float(evaluation[rule, dims].sum() / evaluation.sum()),
        "train_accuracy": float(train[rule, dims].sum() / train.sum()),
        "dim_to_factor": rule.tolist(),
        "train_table": train.tolist(),
        **result,
    }


def _beta_points(codes: GridCodes, rng: np.random.Generator, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """n points: mean |code1 - code2| over `batch` pairs sharing one factor's value; label = that factor."""
    labels = rng.integers(0, len(codes.sizes), size=n)
    points = np.empty((n, codes.loc.shape[1]))
    for start in range(0, n, CHUNK):
        k = labels[start : start + CHUNK]
        first = codes.random_classes((len(k), batch), rng)
        second = codes.random_classes((len(k), batch), rng)
        rows, pairs = np.arange(len(k))[:, None], np.arange(batch)[None, :]
        second[rows, pairs, k[:, None]] = first[rows, pairs, k[:, None]]
        diff = codes.loc[codes.index_of(first)] - codes.loc[codes.index_of(second)]
        points[start : start + CHUNK] = np.abs(diff).mean(axis=1)
    return points, labels


def beta_vae_score(
    codes: GridCodes,
    rng: np.random.Generator,
    batch: int = 64,
    train_points: int = 10_000,
    eval_points: int = 5_000,
    logistic: dict | None = None,
) -> dict:
    """beta-VAE score (Higgins et al. 2017): accuracy of a linear classifier naming the shared factor."""
    params = {} if logistic is None else dict(logistic)
    x_tr, y_tr = _beta_points(codes, rng, train_points, batch)
    x_ev, y_ev = _beta_points(codes, rng, eval_points, batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(random_state=int(rng.integers(0, 2**31 - 1)), **params).fit(x_tr, y_tr)
    return {
        "beta_vae_score": float(np.mean(model.predict(x_ev) == y_ev)),
        "train_accuracy": float(np.mean(model.predict(x_tr) == y_tr)),
        "batch": batch,
        "train_points": train_points,
        "eval_points": eval_points,
        "learner": "LogisticRegression (sklearn defaults: lbfgs, C=1, max_iter=100)",
        "learner_params": params,
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        "factors": list(codes.names),
        "codes": CODES,
    }
