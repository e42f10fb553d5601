"""model=conv against model=mlp on MNIST and Fashion-MNIST, at equal steps and at equal training time.

For each dataset: conv for --steps steps; mlp for the same steps; mlp again for as many steps as
fit in the conv run's training seconds (its evaluations excluded), at the mlp's measured speed.
Every run: latent 10, batch 64, beta=0.01 (seed units), dynamically binarised training images,
so the nats are a log-likelihood; test figures are the loop's last test row, the single-draw
-ELBO over all 10,000 statically binarised test images, in nats per image.

Run:  python benchmarks/conv_vs_mlp.py [--steps 5000] [--datasets mnist fashion_mnist]
Run it alone: the equal-time column depends on both models' speed on the same idle cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vaecli.config.hydra_bridge import compose
from vaecli.run.loop import train_model

COMMON = ["data.binarize=dynamic", "train.progress=false", "train.eval_every=0"]


def train(dataset: str, model: str, steps: int) -> dict[str, float]:
    cfg = compose([f"data={dataset}", f"model={model}", f"train.steps={steps}", *COMMON])
    with tempfile.TemporaryDirectory() as out:
        result = train_model(cfg, Path(out), say=lambda message: None)
    test = result.final["test"]
    seconds = result.seconds - result.eval_seconds
    return {
        "steps": steps,
        "seconds": seconds,
        "neg_elbo": test["neg_elbo_nats"],
        "recon": test["recon_nats"],
        "kl": test["kl_nats"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    args = parser.parse_args()
    print("| data | model | steps | training s | test -ELBO (nats) | recon | KL |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        conv = train(dataset, "conv", args.steps)
        mlp = train(dataset, "mlp", args.steps)
        equal_time = round(conv["seconds"] * mlp["steps"] / mlp["seconds"])
        mlp_long = train(dataset, "mlp", equal_time)
        for name, row in (("conv", conv), ("mlp, equal steps", mlp), ("mlp, equal time", mlp_long)):
            print(
                f"| {dataset} | {name} | {row['steps']} | {row['seconds']:.1f} | {row['neg_elbo']:.2f} "
                f"| {row['recon']:.2f} | {row['kl']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
