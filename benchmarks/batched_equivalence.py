"""Same science: the default study batched against its solo runs over three seeds.

Runs `vae sweep hydra/launcher=batched` (the default study, seed defaults) and the same study as
ordinary solo runs with seed=0,1,2 (48 members: `--solo-launcher`, joblib by default), both as real
`vae sweep` processes, then prints for each member its final test -ELBO: the solo runs' min and max
over the three seeds, the batched run, whether it lies inside, and its gap to the solo run of the
same seed (the same batches and noise: float rounding only). Long: about 64 runs of 1024 steps.

  python benchmarks/batched_equivalence.py [--steps 1024] [--solo-launcher joblib] [--keep DIR] [overrides ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

STUDY = ["beta=0,0.01,0.1,1", "latent_size=2,5,10,20"]
SEEDS = (0, 1, 2)
TOLERANCE = 1e-5  # relative: float rounding between the stacked and the solo loop


def sweep(folder: Path, *overrides: str) -> pd.DataFrame:
    command = [sys.executable, "-m", "vaecli", "sweep", *overrides, f"hydra.sweep.dir={folder}"]
    done = subprocess.run(command, capture_output=True, text=True)
    table = pd.read_csv(folder / "sweep.csv")
    if done.returncode != 0 or set(table.status) != {"ok"}:
        sys.exit(f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return table


def compare(batched: pd.DataFrame, solo: pd.DataFrame, seed: int) -> pd.DataFrame:
    keys = ["beta", "latent_size"]
    spread = solo.groupby(keys).test_neg_elbo_nats.agg(["min", "max"]).reset_index()
    same_seed = solo[solo.seed == seed][[*keys, "test_neg_elbo_nats"]].rename(columns={"test_neg_elbo_nats": "solo"})
    ours = batched[[*keys, "test_neg_elbo_nats"]].rename(columns={"test_neg_elbo_nats": "batched"})
    table = spread.merge(ours, on=keys).merge(same_seed, on=keys).sort_values(keys)
    slack = TOLERANCE * table["batched"].abs()
    table["inside"] = (table["batched"] >= table["min"] - slack) & (table["batched"] <= table["max"] + slack)
    table["gap"] = (table["batched"] - table["solo"]).abs() / table["solo"].abs()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--solo-launcher", default="joblib")
    parser.add_argument("--keep", help="write the two sweep folders here instead of a temporary folder")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both sweeps (e.g. threads=1)")
    args = parser.parse_args()
    fixed = [f"train.steps={args.steps}", "device=cpu", *args.overrides]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        batched = sweep(root / "batched", *STUDY, *fixed, "hydra/launcher=batched")
        seeds = f"seed={','.join(map(str, SEEDS))}"
        solo = sweep(root / "solo", *STUDY, seeds, *fixed, f"hydra/launcher={args.solo_launcher}")
    seed = int(batched.seed.iloc[0]) if "seed" in batched else 0
    table = compare(batched, solo, seed)
    print(f"final test -ELBO (nats), {args.steps} steps: batched (seed {seed}) against solo seeds {SEEDS}")
    header = f"{'member':<26}{'solo min':>10}{'solo max':>10}{'batched':>10}{'inside':>8}{'gap to solo seed':>18}"
    print(header)
    for row in table.itertuples():
        member = f"beta={row.beta:g}, latent_size={row.latent_size}"
        inside = "yes" if row.inside else "NO"
        print(f"{member:<26}{row.min:>10.2f}{row.max:>10.2f}{row.batched:>10.2f}{inside:>8}{row.gap:>18.1e}")
    print(f"{int(table.inside.sum())} of {len(table)} members inside the solo spread")


if __name__ == "__main__":
    main()
