"""Step time of every objective at the seed's size, side by side in one run.

Trains the seed config (MLP [100, 100], latent 10, batch 64, MNIST) with vaecli's own loop
(vaecli.run.loop.Loop, test evaluations off) for each objective at its defaults, and prints
milliseconds per step (median of --repeats runs, interleaved), the ratio to the seed's objective,
and this process's peak resident memory. FactorVAE runs with the paper's discriminator (6 layers
of 1000 units), which is most of its step.

Run alone (other processes on the same cores make every figure meaningless):
  python benchmarks/objective_speed.py [--steps 512] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

OBJECTIVES = {
    "beta (the seed)": [],
    "beta + free bits 0.5": ["objective.free_bits=0.5"],
    "beta + warm-up 500": ["objective.warmup_steps=500"],
    "capacity": ["objective=capacity"],
    "tcvae (mws)": ["objective=tcvae", "objective.estimator=mws"],
    "tcvae (mss)": ["objective=tcvae", "objective.estimator=mss"],
    "factor (D 6 x 1000)": ["objective=factor"],
    "dip (i)": ["objective=dip"],
}


def ms_per_step(overrides: list[str], steps: int, threads: int) -> float:
    import torch

    from vaecli.config.hydra_bridge import compose
    from vaecli.config.runtime import usable_cpus
    from vaecli.run.loop import Loop
    from vaecli.run.signals import STOP

    torch.set_num_threads(threads or usable_cpus())
    base = [f"train.steps={steps}", "train.progress=false", "train.eval_every=0", f"threads={threads}"]
    cfg = compose([*base, "data.train_on=train", *overrides])
    with tempfile.TemporaryDirectory() as folder:
        result = Loop(cfg, Path(folder), lambda message: None, None).run(None, STOP)
    return 1000 * (result.seconds - result.eval_seconds) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: the default (the fastest count, timed)")
    args = parser.parse_args()
    ms_per_step([], 32, args.threads)  # warm-up: imports, data
    times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    for _ in range(args.repeats):
        for name, overrides in OBJECTIVES.items():
            times[name].append(ms_per_step(overrides, args.steps, args.threads))
    seed = statistics.median(times["beta (the seed)"])
    print(f"seed config, {args.steps} steps, median of {args.repeats}, threads={args.threads}")
    print("objective | ms per step | steps/s | x the seed's step")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name} | {median:.2f} | {1000 / median:.0f} | {median / seed:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory of this process: {peak:.2f} GB")


if __name__ == "__main__":
    main()
