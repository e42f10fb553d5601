"""What each objective does at the seed's size: one `vae train` per objective, then its test figures.

Every run is the seed config (MNIST grey levels, MLP [100, 100], latent 10, batch 64, 1024 steps,
60,000 training images) with one objective at its defaults, except capacity, whose C rises to
25 nats over the run's 1024 steps (its preset's 100,000 would leave C near 0). Each ends with
`eval.iwae_k=1000` on the 10,000 test images. Prints, per objective: the test -ELBO (single
sample, nats per image; a cross-entropy on grey levels), the IWAE_1000 bound, the active units
(variance of the posterior mean above 0.01), each dimension's KL (nats, largest first), and the
training seconds.

  python benchmarks/objective_study.py [--out runs/objective_study]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

RUNS = {
    "beta (the seed, beta=0.01)": [],
    "beta + free bits 0.5": ["objective.free_bits=0.5"],
    "capacity (gamma 1000, C to 25 over the run)": ["objective=capacity", "objective.c_steps=1024"],
    "tcvae (alpha 1, beta 6, gamma 1, mss)": ["objective=tcvae"],
    "factor (gamma 40, D 6 x 1000)": ["objective=factor"],
    "dip (i, lambda_od 10, lambda_d 100)": ["objective=dip"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/objective_study")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for number, (name, overrides) in enumerate(RUNS.items()):
        run_dir = out / f"{number}"
        if not (run_dir / "evaluation.json").is_file():
            settings = [*overrides, "eval.iwae_k=1000", "train.progress=false", f"hydra.run.dir={run_dir}"]
            command = [sys.executable, "-m", "vaecli", "train", *settings]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
        dims = pd.read_csv(run_dir / "evaluation_dims.csv")
        kl = sorted(dims.filter(like="kl").iloc[:, 0], reverse=True)
        rows.append(
            {
                "objective": name,
                "test -ELBO": round(result["final"]["test"]["neg_elbo_nats"], 1),
                "IWAE_1000 bound": round(evaluation["bound"]["nll_bound_nats"], 1),
                "active units": evaluation["latents"]["active_units"],
                "KL per dimension (nats)": " ".join(f"{value:.2f}" for value in kl),
                "train s": round(result["train_seconds"], 1),
            }
        )
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + " --- |" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")


if __name__ == "__main__":
    main()
