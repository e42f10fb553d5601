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


def spin() -> None:
    while True:
        pass


def steps_per_second(threads: int, steps: int) -> float:
    import torch

    from vaecli.config.hydra_bridge import compose
    from vaecli.run.loop import train_model

    torch.set_num_threads(threads)
    cfg = compose([f"train.steps={steps}", "train.progress=false", "train.eval_every=0", "data.train_on=train"])
    with tempfile.TemporaryDirectory() as folder:
        result = train_model(cfg, Path(folder), say=lambda message: None)
    return steps / (result.seconds - result.eval_seconds)


def main() -> None:
    from vaecli.config.runtime import threads_for, usable_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2, help="median of this many runs per cell")
    args = parser.parse_args()
    cpus = usable_cpus()
    counts = list(range(1, cpus + 1))
    steps_per_second(1, 20)  # warm-up: data, imports
    print(f"{cpus} CPUs; the default (threads=0) uses {threads_for(0, None)} threads; seed config, steps/s")
    print("busy cores | " + " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts) + " | default / best")
    for busy in range(cpus + 1):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            rates = [statistics.median(steps_per_second(n, args.steps) for _ in range(args.repeat)) for n in counts]
        finally:
            for process in spinners:
                process.terminate()
        default = rates[counts.index(threads_for(0, None))]
        cells = " | ".join(f"{rate:.0f}" for rate in rates)
        print(f"{busy} | {cells} | {default / max(rates):.2f}")


if __name__ == "__main__":
    main()
