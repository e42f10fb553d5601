"""How to train G `model=conv` members at once: vmap over stacked weights, grouped convolutions, or one by one.

Prints ms per training step (forward, backward, Adam) of G members at 64 x 64 colour (batch 64,
latent 10, Bernoulli decoder) for, in one process:
  vmap        vaecli.sweep.batched.vmapped.VmappedStack: torch.func.vmap over functional_call
  grouped     vaecli.sweep.batched.vmapped.GroupedConvStack: each conv one grouped conv, by hand
  one by one  G plain ConvVAEs stepped after each other (what the basic launcher does per process)
and the ratio of each to one by one (below 1: faster). On 2 CPU cores grouped convolutions ran
1.4x slower than one by one, so the batched launcher stacks conv members only off the CPU
(vaecli.sweep.batched.groups.stackable); this script is how that choice was made.

Run:  python benchmarks/stacked_conv.py [--members 4] [--steps 10] [--size 64]
Run it alone: other processes on the same cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from vaecli.models.conv import ConvVAE
from vaecli.models.likelihoods import logit_gradient
from vaecli.sweep.batched.vmapped import GroupedConvStack, VmappedStack


def stacked_step(stack, x: torch.Tensor):
    optimizer = torch.optim.Adam(stack.parameters(), lr=1e-4)

    def step() -> None:
        loc, scale = stack.encode(x)
        logits = stack.decode(loc + scale * torch.randn_like(scale))
        gradient = logit_gradient(logits, x, "bernoulli", 1.0 / x.numel())
        kl = (0.5 * (scale.square() + loc.square() - 1) - scale.log()).sum() * 1e-6
        optimizer.zero_grad()
        torch.autograd.backward([logits, kl], [gradient, torch.ones_like(kl)])
        optimizer.step()

    return step


def one_by_one(models, x: torch.Tensor):
    steps = [stacked_step(_Solo(model), x) for model in models]
    return lambda: [step() for step in steps]


class _Solo(torch.nn.Module):
    """A plain ConvVAE behind the stacked interface (G = 1, no stacking)."""

    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def encode(self, x):
        q = self.model.encoder(x)
        return q.loc, q.scale

    def decode(self, z):
        return self.model.decoder(z).logits


def timed(step, steps: int) -> float:
    step(), step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (3, args.size, args.size)
    torch.manual_seed(0)
    build = lambda latent: ConvVAE(latent, shape)  # noqa: E731
    models = [build(10) for _ in range(args.members)]
    x = torch.rand(64, 3 * args.size * args.size)
    ways = {
        "vmap": stacked_step(VmappedStack(models, build), x),
        "grouped": stacked_step(GroupedConvStack(models, build), x),
        "one by one": one_by_one(models, x),
    }
    figures = {name: [timed(step, args.steps) for _ in range(args.repeats)] for name, step in ways.items()}
    base = statistics.median(figures["one by one"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.members} members, "
        f"3x{args.size}x{args.size}"
    )
    print(f"{'way':<12}{'ms/step (median)':>18}{'runs':>24}{'x one by one':>14}")
    for name, values in figures.items():
        runs = " ".join(f"{value:.0f}" for value in values)
        print(f"{name:<12}{statistics.median(values):>18.0f}{runs:>24}{statistics.median(values) / base:>14.2f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
