"""The seed's training speed at each torch thread count while other processes keep 0, 1 or 2 cores busy.

A user's machine is rarely idle. This prints steps/s of the seed config's loop (vaecli.run.loop,
evaluation time left out) for every thread count from 1 to the CPUs, with 0, 1, ... busy-loop
processes beside it, side by side, and the thread count `threads=0` (the default) picks today.
Run it alone: it makes the load itself.

  python benchmarks/thread_load.py [--steps 400] [--repeat 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
from pathlib import Path

from vaecli.run.signals import STOP


def spin() -> None:
    while True:
        pass


def steps_per_second(threads: int, steps: int) -> tuple[float, int]:
    """steps/s at ``threads`` (0: the default, which times the step at each count and keeps the
    fastest; the probe's own time, about 0.1 s, is not counted), and the count it ran at."""
    import torch

    from vaecli.config.hydra_bridge import compose
    from vaecli.config.runtime import threads_for
    from vaecli.run.loop import Loop

    torch.set_num_threads(threads or threads_for(0, None))  # as a run's session sets it
    overrides = ["train.progress=false", "train.eval_every=0", "data.train_on=train", f"threads={threads}"]
    cfg = compose([f"train.steps={steps}", *overrides])
    with tempfile.TemporaryDirectory() as folder:
        loop = Loop(cfg, Path(folder), lambda message: None, None)
        result = loop.run(None, STOP)
    return steps / (result.seconds - result.eval_seconds), loop.threads


def main() -> None:
    from vaecli.config.runtime import threads_for, usable_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2, help="median of this many runs per cell")
    args = parser.parse_args()
    cpus = usable_cpus()
    counts = list(range(1, cpus + 1))
    steps_per_second(1, 20)  # warm-up: data, imports
    print(f"{cpus} CPUs; seed config, steps/s (median of {args.repeat} runs of {args.steps} steps)")
    header = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
    print(f"busy cores | {header} | default threads=0 (chose) | default / best | all cores / best")
    for busy in range(cpus + 1):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            rates = [statistics.median(steps_per_second(n, args.steps)[0] for _ in range(args.repeat)) for n in counts]
            runs = [steps_per_second(0, args.steps) for _ in range(args.repeat)]
        finally:
            for process in spinners:
                process.terminate()
        default = statistics.median(rate for rate, _ in runs)
        chose = "/".join(str(count) for _, count in runs)
        all_cores = rates[counts.index(threads_for(0, None))]
        cells = " | ".join(f"{rate:.0f}" for rate in rates)
        best = max(rates)
        print(f"{busy} | {cells} | {default:.0f} ({chose}) | {default / best:.2f} | {all_cores / best:.2f}")


if __name__ == "__main__":
    main()
