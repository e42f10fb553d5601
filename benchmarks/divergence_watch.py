"""What finding the exact step of a divergence costs: vaecli's training step with and without its watch.

The watch (vaecli.train.DivergenceWatch) notes after every update, on the device, the first step
whose forward pass gave NaN or inf; the loop reads it only where it reads the loss anyway. This
times the seed config's step (MLP [100, 100], latent 10, batch 64, fused Adam, real MNIST in
memory) in alternating blocks: without a check, with the watch, and with the naive alternative,
an exact host-side check of every weight after every update; it prints the median time per step
of each and the overhead in percent.

Run:  python benchmarks/divergence_watch.py [--blocks 9] [--steps 256] [--threads 2]
Other torch processes on the same cores make the figures noisy; run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaecli.checkpoint import weights_are_finite
from vaecli.data import Batches, load_split
from vaecli.hydra_bridge import compose
from vaecli.model import build_model
from vaecli.objective import backward_beta_elbo
from vaecli.train import DivergenceWatch, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=9, help="alternating timed blocks per variant")
    parser.add_argument("--steps", type=int, default=256, help="training steps per block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose([])
    images = load_split(cfg.data.name, cfg.data.root, train=True).images
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg.train.lr, torch.device("cpu"))
    batches = Batches(images, cfg.train.batch_size, True, torch.Generator().manual_seed(0))
    watch = DivergenceWatch(torch.device("cpu"))
    variants = {
        "no check": lambda step, logits, kl_term: None,
        "watch": watch.observe,
        "weights": lambda step, logits, kl_term: weights_are_finite(model),
    }
    step = 0

    def block(observe) -> float:
        nonlocal step
        started = time.perf_counter()
        for _ in range(args.steps):
            step += 1
            x = batches.batch(step)
            q, _, p = model(x)
            optimizer.zero_grad(set_to_none=True)
            kl_term = backward_beta_elbo(q, p.logits, x, float(cfg.beta))
            optimizer.step()
            observe(step, p.logits, kl_term)
        watch.check(step, 0.0)
        return (time.perf_counter() - started) / args.steps

    for observe in variants.values():  # warm up
        block(observe)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.blocks):
        for name, observe in variants.items():
            times[name].append(block(observe))
    plain = statistics.median(times["no check"])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.blocks} x {args.steps} steps per variant")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>10}: {median * 1e3:.3f} ms/step  ({(median / plain - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
