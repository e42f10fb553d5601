"""What `vae evaluate --disentanglement` costs: rendering dSprites, encoding its grid, each metric, peak memory.

Prints, in one process: the time to render the grid (into a scratch root), the time to encode all
737,280 images with a freshly built model (`--model mlp` or `conv`; the weights do not change the
cost), each metric's time at disentanglement_lib's default sample sizes, and the process's peak
resident memory. With --train-steps, first a `vae train data=dsprites` process's time and peak
resident memory. DCI runs with the fast learner unless --exact-dci.

Run:  python benchmarks/disentanglement_speed.py [--model conv] [--exact-dci] [--train-steps 500]
Run it alone: other processes on the same cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaecli.data.dsprites import DSPRITES, NAMES, SIZES
from vaecli.measure.disentanglement.evaluate import encode_grid, run_metrics
from vaecli.measure.disentanglement.grid import GridCodes


def peak() -> str:
    return f"peak resident memory so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


def train_run(root: Path, model: str, steps: int) -> None:
    """A `vae train data=dsprites` process on the rendered grid: its wall time and peak resident memory."""
    command = [sys.executable, "-m", "vaecli", "train", "data=dsprites", f"model={model}", f"train.steps={steps}"]
    command += [f"data.root={root}", f"hydra.run.dir={root / 'run'}", "beta=0.01"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vae train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"vae train data=dsprites model={model} train.steps={steps} (batch 64): {time.perf_counter() - started:.1f} s"
        f" in all, peak resident memory {rss:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "conv"), default="conv")
    parser.add_argument("--exact-dci", action="store_true")
    parser.add_argument("--train-steps", type=int, default=0, help="also time `vae train data=dsprites` this long")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        DSPRITES.ensure(Path(scratch), say=lambda message: None)
        print(f"render the grid: {time.perf_counter() - started:.1f} s; {peak()}")
        packed = np.asarray(DSPRITES.grid(Path(scratch)))
        if args.train_steps:
            train_run(Path(scratch), args.model, args.train_steps)
    from vaecli.models.conv import ConvVAE
    from vaecli.models.mlp import VAE

    torch.manual_seed(0)
    model = ConvVAE(10, (1, 64, 64)) if args.model == "conv" else VAE(10, image_shape=(1, 64, 64))
    started = time.perf_counter()
    loc, scale = encode_grid(model.eval(), packed, torch.device("cpu"))
    print(f"encode {len(loc)} images ({args.model}): {time.perf_counter() - started:.1f} s; {peak()}")
    codes = GridCodes(loc, scale, SIZES, NAMES)
    found = run_metrics(codes, 0, not args.exact_dci, say=lambda line: print(f"{line}; {peak()}"))
    total = sum(result["seconds"] for result in found.values())
    print(f"every metric: {total:.1f} s; all but DCI: {total - found['dci']['seconds']:.1f} s")
    print(peak())


if __name__ == "__main__":
    main()
