"""What finding the exact step of a divergence costs, per training step, at the seed config.

The loop's DivergenceWatch (vaecli.run.loop) adds up the logits and the KL term after every update
and notes the first step whose sum is NaN or inf; on a CPU it reads that sum on the host, on a
GPU it keeps the note on the device. This runs the seed config's training step (MLP [100, 100],
latent 10, batch 64, fused Adam, real MNIST in memory) and, after each step, one of these checks
in turn, timing the step and the check separately in CPU time of this thread (which other
processes on shared cores disturb far less than wall time):
  watch          DivergenceWatch.observe as vae train runs it here (the CPU path)
  device note    the GPU path (note kept on the device), run on the CPU
  all weights    the naive alternative: an exact check of every weight (checkpoint.weights_are_finite)
It prints the median cost of each check and its share of the median step.

Run:  python benchmarks/divergence_watch.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaecli.config.hydra_bridge import compose
from vaecli.data.tensors import Batches, load_split
from vaecli.models.registry import build_model
from vaecli.objectives.beta import backward_beta_elbo
from vaecli.run.loop import DivergenceWatch, make_optimizer
from vaecli.runfolder.checkpoint import weights_are_finite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps (each check runs on a third)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # thread CPU time measures one thread's work
    torch.manual_seed(0)
    cfg = compose([])
    images = load_split(cfg.data.name, cfg.data.root, train=True).images
    model = build_model(cfg)
    cpu = torch.device("cpu")
    optimizer = make_optimizer(model, cfg.train.lr, cpu)
    batches = Batches(images, cfg.train.batch_size, True, torch.Generator().manual_seed(0))
    watch, on_device = DivergenceWatch(cpu), DivergenceWatch(cpu, on_host=False)
    checks = {
        "watch": watch.observe,
        "device note": on_device.observe,
        "all weights": lambda step, logits, kl_term: weights_are_finite(model),
    }
    step_times: list[float] = []
    check_times: dict[str, list[float]] = {name: [] for name in checks}
    names = list(checks)
    for step in range(1, args.steps + 1):
        started = time.thread_time()
        x = batches.batch(step)
        q, _, p = model(x)
        optimizer.zero_grad(set_to_none=True)
        kl_term = backward_beta_elbo(q, p.logits, x, float(cfg.beta))
        optimizer.step()
        trained = time.thread_time()
        name = names[step % len(names)]
        checks[name](step, p.logits, kl_term)
        check_times[name].append(time.thread_time() - trained)
        step_times.append(trained - started)
    watch.check(args.steps, 0.0)
    step = statistics.median(step_times[100:])
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps: median step {step * 1e3:.3f} ms CPU")
    for name, values in check_times.items():
        cost = statistics.median(values[30:])
        print(f"{name:>12}: {cost * 1e6:7.1f} us CPU per step = {cost / step * 100:5.2f} % of a step")


if __name__ == "__main__":
    main()
