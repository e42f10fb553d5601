"""Rough speed probe: G members trained as one stacked model against the solo loop run G times.

Members are the default study (beta 0, 0.01, 0.1, 1 x latent size 2, 5, 10, 20; seed 0), seed
config otherwise (MLP [100, 100], batch 64, Adam 1e-3, MNIST training set). Both sides get the
same images in memory and evaluate the test set only at the end; loop time excludes evaluation;
wall and cpu time are whole calls (a solo call also loads its data, as a solo run does). On shared
cores, cpu time (this process's) is the steadier figure.
It also prints how far each member's final test -ELBO lies from its solo run's (same seed, same
batches, same noise: float rounding only).

Run:  python benchmarks/stacked_probe.py [--steps 256] [--members 16] [--threads 1] [--seeds]
Other processes on the same cores make the figures rough; run it alone for figures to quote.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vaecli.config.schema import Config, default_root
from vaecli.data.tensors import load_split
from vaecli.run import loop as solo
from vaecli.sweep.batched.trainer import GroupSettings, Member, StackedTrainer

BETAS, LATENT_SIZES = (0.0, 0.01, 0.1, 1.0), (2, 5, 10, 20)


def study(count: int, distinct_seeds: bool) -> list[Member]:
    grid = [(beta, size) for beta in BETAS for size in LATENT_SIZES]
    return [
        Member(
            seed=k if distinct_seeds else k // len(grid),
            beta=grid[k % len(grid)][0],
            latent_size=grid[k % len(grid)][1],
        )
        for k in range(count)
    ]


def solo_config(root: str, member: Member, steps: int) -> object:
    overrides = {
        "data": {"name": "mnist", "root": root},
        "train": {"steps": steps, "eval_every": 0, "progress": False},
        "seed": member.seed,
        "beta": member.beta,
        "latent_size": member.latent_size,
        "device": "cpu",
    }
    return OmegaConf.merge(OmegaConf.structured(Config), overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", action="store_true", help="give every member its own seed (own batch order)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = str(default_root())
    members = study(args.members, args.seeds)
    train_images = load_split("mnist", root, train=True).images
    test_images = load_split("mnist", root, train=False).images
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(members)} members x {args.steps} steps")

    started, cpu = time.perf_counter(), time.process_time()
    group = StackedTrainer(members, GroupSettings(steps=args.steps, eval_every=0), train_images, test_images)
    results = group.run()
    stacked_wall, stacked_cpu = time.perf_counter() - started, time.process_time() - cpu
    stacked_loop = group.seconds - group.eval_seconds

    solo_loop, solo_wall, solo_cpu, gaps = 0.0, 0.0, 0.0, []
    with tempfile.TemporaryDirectory() as folder:
        for k, member in enumerate(members):
            out = Path(folder) / str(k)
            out.mkdir()
            started, cpu = time.perf_counter(), time.process_time()
            alone = solo.train_model(solo_config(root, member, args.steps), out, say=lambda message: None)
            solo_wall += time.perf_counter() - started  # includes its data load, as a solo run pays it
            solo_cpu += time.process_time() - cpu
            solo_loop += alone.seconds - alone.eval_seconds
            mine, theirs = results[k].final["test"]["neg_elbo_nats"], alone.final["test"]["neg_elbo_nats"]
            gaps.append(abs(mine - theirs) / abs(theirs))

    member_steps = len(members) * args.steps
    print(f"{'':<16}{'loop s':>9}{'member-steps/s':>16}{'wall s':>9}{'cpu s':>9}")
    for name, loop, wall, cpu in (
        (f"solo loop x{len(members)}", solo_loop, solo_wall, solo_cpu),
        ("stacked", stacked_loop, stacked_wall, stacked_cpu),
    ):
        print(f"{name:<16}{loop:>9.1f}{member_steps / loop:>16.0f}{wall:>9.1f}{cpu:>9.1f}")
    ratios = (stacked_loop / solo_loop, stacked_wall / solo_wall, stacked_cpu / solo_cpu)
    print("ratio stacked/solo: loop {:.2f}, wall {:.2f}, cpu {:.2f}".format(*ratios))
    print(f"final test -ELBO, stacked vs solo: largest relative gap {max(gaps):.2e}")


if __name__ == "__main__":
    main()
