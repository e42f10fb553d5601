"""What `vae evaluate --disentanglement` costs: rendering dSprites, encoding its grid, each metric, peak memory.

Prints, in one process: the time to render the grid (into a scratch root), the time to encode all
737,280 images with a freshly built model (`--model mlp` or `conv`; the weights do not change the
cost), each metric's time at disentanglement_lib's default sample sizes, and the process's peak
resident memory. DCI runs with the fast learner unless --exact-dci.

Run:  python benchmarks/disentanglement_speed.py [--model conv] [--exact-dci]
Run it alone: other processes on the same cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaecli.data.dsprites import DSPRITES, NAMES, SIZES
from vaecli.measure.disentanglement.evaluate import encode_grid, run_metrics
from vaecli.measure.disentanglement.grid import GridCodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "conv"), default="conv")
    parser.add_argument("--exact-dci", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        DSPRITES.ensure(Path(scratch), say=lambda message: None)
        print(f"render the grid: {time.perf_counter() - started:.1f} s")
        packed = np.asarray(DSPRITES.grid(Path(scratch)))
    from vaecli.models.conv import ConvVAE
    from vaecli.models.mlp import VAE

    torch.manual_seed(0)
    model = ConvVAE(10, (1, 64, 64)) if args.model == "conv" else VAE(10, image_shape=(1, 64, 64))
    started = time.perf_counter()
    loc, scale = encode_grid(model.eval(), packed, torch.device("cpu"))
    print(f"encode {len(loc)} images ({args.model}): {time.perf_counter() - started:.1f} s")
    codes = GridCodes(loc, scale, SIZES, NAMES)
    found = run_metrics(codes, 0, not args.exact_dci, say=print)
    total = sum(result["seconds"] for result in found.values())
    print(f"every metric: {total:.1f} s; all but DCI: {total - found['dci']['seconds']:.1f} s")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
