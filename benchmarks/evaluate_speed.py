"""Speed of the importance-weighted bound: k draws per test image through the seed model.

The issue's target: k=1000 over the 10,000 MNIST test images of the seed model (784-100-100-10)
in under 2 minutes on 2 CPU cores. Prints seconds and images/s for vaecli.measure.bounds, and, on the
first --plain images, the same bound written plainly with torch.distributions for comparison
(decoder(z).log_prob(x).sum(-1), softplus and all).

Run:  python benchmarks/evaluate_speed.py [--k 1000] [--n 10000] [--threads 2] [--checkpoint RUN/checkpoint.pt]
      python benchmarks/evaluate_speed.py --command RUN [--k 1000] [--n 10000]   (the real `vae evaluate`,
      its wall time and peak resident memory; target: under 1.5 GB for the seed model at k=1000, all 10,000)
Without --checkpoint the seed architecture is timed at its initial weights: the work per draw does
not depend on the weights. Other processes on the same cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time

import torch

from vaecli.config.schema import default_root
from vaecli.data.tensors import binarize_split, load_split
from vaecli.measure.bounds import LATENTS_PER_PASS, chunk_sizes, importance_weighted_bound
from vaecli.models.mlp import VAE


def time_command(run: str, k: int, n: int) -> None:
    """`vae evaluate` as a user runs it: wall time and peak resident memory (ru_maxrss) of its process."""
    command = [sys.executable, "-m", "vaecli", "evaluate", "-c", run, "--k", str(k), "--n", str(n)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    bound = next((line for line in done.stdout.splitlines() if "-IWAE_" in line), done.stderr.strip()[-200:])
    print(f"vae evaluate -c {run} --k {k} --n {n}: {seconds:.1f} s wall, peak resident memory {peak_mb:,.0f} MB")
    print(f"  {' '.join(bound.split())}")


def seed_model(checkpoint: str | None) -> VAE:
    model = VAE(latent_size=10, hidden_sizes=[100, 100])
    if checkpoint:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        config = payload["config"]
        model = VAE(latent_size=int(config["latent_size"]), hidden_sizes=list(config["model"]["hidden_sizes"]))
        model.load_state_dict(payload["model"])
    return model.eval()


@torch.inference_mode()
def plain_bound(model: VAE, images: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The textbook bound with the same chunking: every log-density from torch.distributions."""
    per_chunk, per_pass = chunk_sizes(k, LATENTS_PER_PASS)
    out = []
    for x in images.split(per_chunk):
        q = model.encoder(x)
        parts = []
        for start in range(0, k, per_pass):
            z = q.loc + q.scale * torch.randn((min(per_pass, k - start), *q.loc.shape), generator=generator)
            parts.append(
                model.decoder(z).log_prob(x).sum(-1) + model.prior().log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
            )
        out.append(torch.logsumexp(torch.cat(parts), 0) - math.log(k))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n", type=int, default=10_000, help="first N test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latents-per-pass", type=int, default=LATENTS_PER_PASS)
    parser.add_argument("--plain", type=int, default=100, help="images for the plain comparison (0: skip)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--command",
        metavar="RUN",
        default=None,
        help="instead: time the real `vae evaluate -c RUN --k K --n N` in a process of its own, with its peak memory",
    )
    args = parser.parse_args()
    if args.command:
        return time_command(args.command, args.k, args.n)

    torch.set_num_threads(args.threads)
    grey = load_split("mnist", default_root(), train=False, limit=args.n).images
    images = binarize_split(grey, "static", train=False)
    model = seed_model(args.checkpoint)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}, {len(images)} binarised test images"
    )

    importance_weighted_bound(model, images[:8], args.k)  # warm-up
    cpu_started, started = time.process_time(), time.perf_counter()
    bound = importance_weighted_bound(
        model, images, args.k, generator=torch.Generator().manual_seed(0), latents_per_pass=args.latents_per_pass
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = bound.summary()
    print(
        f"vaecli.measure.bounds: {seconds:.1f} s wall ({cpu:.1f} s CPU), {len(images) / seconds:.0f} images/s, "
        f"{len(images) * args.k / seconds / 1e6:.2f} M draws/s; -IWAE_{args.k} = "
        f"{summary['nll_bound_nats']:.2f} +- {summary['nll_bound_se']:.2f} nats; peak resident memory {peak_mb:,.0f} MB"
    )
    if args.n < 10_000:
        print(f"  projected for 10,000 images: {seconds * 10_000 / len(images):.0f} s")
    if args.plain:
        subset = images[: args.plain]
        started = time.perf_counter()
        plain = plain_bound(model, subset, args.k, torch.Generator().manual_seed(0))
        plain_seconds = time.perf_counter() - started
        started = time.perf_counter()
        fast = importance_weighted_bound(model, subset, args.k, generator=torch.Generator().manual_seed(0))
        fast_seconds = time.perf_counter() - started
        print(
            f"on {len(subset)} images: plain torch.distributions {len(subset) / plain_seconds:.1f} images/s, "
            f"vaecli.measure.bounds {len(subset) / fast_seconds:.1f} images/s ({plain_seconds / fast_seconds:.2f}x); "
            f"mean |difference| {float((plain.double() - fast.iwae).abs().mean()):.4f} nats (same draws)"
        )


if __name__ == "__main__":
    main()
