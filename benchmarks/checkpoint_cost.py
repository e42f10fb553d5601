"""What checkpoints on the way cost: the seed run with train.checkpoint_every at its default against 0.

In one process, alternating, --repeats times each (the seed config: 1024 steps, batch 64, MLP [100, 100]):
  default   train.checkpoint_every=null: a checkpoint after about every 60 s of training
  end-only  train.checkpoint_every=0: the checkpoint at the end only (what every run writes anyway)
  every-N   train.checkpoint_every=N steps (--every, default 128): a far denser interval, so the
            cost of one save shows at all
and prints, for each, the training time (evaluations included, the final save excluded), the
saves made on the way and the time they took, as a percentage of the training time. The target
is under 3 % at the default interval. Also: the cost of one save (weights, Adam state, RNG and
shuffle states, the epoch's permutation, metrics.csv fsync, atomic rename) and what that is per
minute of training, the default interval's worst case for a run of any length.

Run:  python benchmarks/checkpoint_cost.py [--repeats 5] [--every 128]
Other processes on the same cores make the figures noisy; run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaecli.config.schema import AUTO_CHECKPOINT_SECONDS
from vaecli.run import loop as train_module


class SaveTimer:
    """Wraps vaecli.run.loop.Loop.save: how many saves on the way (not the last one) and how long they took."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.original = train_module.Loop.save

    def __enter__(self) -> SaveTimer:
        timer = self

        def timed(loop) -> None:
            started = time.perf_counter()
            timer.original(loop)
            timer.durations.append(time.perf_counter() - started)

        train_module.Loop.save = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        train_module.Loop.save = self.original  # type: ignore[method-assign]


def run_once(root: str, every: str) -> tuple[float, list[float]]:
    """(training seconds, durations of the saves on the way) for one seed run."""
    from vaecli.config.hydra_bridge import compose

    cfg = compose([f"data.root={root}", "train.progress=false", f"train.checkpoint_every={every}"])
    with tempfile.TemporaryDirectory() as folder, SaveTimer() as timer:
        result = train_module.train_model(cfg, Path(folder), say=lambda message: None)
    return result.seconds, timer.durations[:-1]  # the last save ends every run, whatever the interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=128, help="the dense interval, in steps")
    parser.add_argument("--root", default=None, help="data root (default: vaecli's)")
    args = parser.parse_args()

    from vaecli.config.schema import default_root

    root = str(args.root or default_root())
    variants = {"default": "null", "end-only": "0", f"every-{args.every}": str(args.every)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed config, {args.repeats} repeats each")
    run_once(root, "0")  # warm-up: data in the page cache, kernels chosen
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    saves: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, every in variants.items():  # side by side: each repeat runs every variant once
            trained, durations = run_once(root, every)
            seconds[name].append(trained)
            saves[name].extend(durations)
    end_only = statistics.median(seconds["end-only"])
    print(f"{'variant':<12}{'train s (median)':>18}{'vs end-only':>13}{'saves/run':>11}{'in saves':>10}")
    for name in variants:
        median = statistics.median(seconds[name])
        per_run = len(saves[name]) / args.repeats
        share = 100 * sum(saves[name]) / sum(seconds[name])
        print(f"{name:<12}{median:>18.3f}{100 * (median / end_only - 1):>+12.1f}%{per_run:>11.1f}{share:>9.2f}%")
    print("'in saves' is timed around each save; 'vs end-only' also holds whatever else the machine was doing")
    one = statistics.median(saves[f"every-{args.every}"])
    per_minute = 100 * one / AUTO_CHECKPOINT_SECONDS
    print(
        f"one save: {1000 * one:.1f} ms (median of {len(saves[f'every-{args.every}'])}); at the default interval "
        f"(one save per {AUTO_CHECKPOINT_SECONDS:.0f} s of training) that is {per_minute:.3f} % of any run's time"
    )


if __name__ == "__main__":
    main()
