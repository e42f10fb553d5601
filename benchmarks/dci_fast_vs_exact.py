"""How far the fast DCI (20 stages at rate 0.5) lies from disentanglement_lib's (100 at 0.1) on trained models.

For each run folder given (trained on data=dsprites), encodes the run's whole factor grid once and
computes DCI with both learners on the same 10,000 / 5,000 sampled points (the same seed), then
prints disentanglement, completeness and informativeness side by side with their differences and
each learner's time.

Run:  python benchmarks/dci_fast_vs_exact.py RUN [RUN ...]
Timings are wall seconds on this machine's cores; run it alone for them to mean anything.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vaecli.measure.disentanglement.evaluate import encode_grid, factor_grid
from vaecli.measure.disentanglement.grid import GridCodes
from vaecli.measure.disentanglement.metrics import dci
from vaecli.runfolder.checkpoint import load_model

KEYS = ("disentanglement", "completeness", "informativeness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    header = "".join(f"{key[:6] + ' exact':>14}{'fast':>8}{'diff':>8}" for key in KEYS)
    print(f"{'run':<32}{header}{'exact s':>9}{'fast s':>8}")
    for run in args.runs:
        loaded = load_model(run, "cpu")
        dataset, root = factor_grid(loaded.config, None, run)
        loc, scale = encode_grid(loaded.model.eval(), dataset.grid(root, loaded.config.data), loaded.device)
        codes = GridCodes(loc, scale, tuple(dataset.factor_sizes(root, loaded.config.data)), tuple(dataset.names))
        found, seconds = {}, {}
        for learner in ("gbt", "fast"):
            started = time.perf_counter()
            found[learner] = dci(codes, np.random.default_rng(args.seed), learner=learner)
            seconds[learner] = time.perf_counter() - started
        cells = "".join(
            f"{found['gbt'][key]:>14.3f}{found['fast'][key]:>8.3f}{found['fast'][key] - found['gbt'][key]:>+8.3f}"
            for key in KEYS
        )
        print(f"{run[-32:]:<32}{cells}{seconds['gbt']:>9.1f}{seconds['fast']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
