"""One grid through the basic, joblib and batched launchers, as real `vae sweep` processes, side by side.

Prints each launcher's wall time (the whole `vae sweep` process: start-up, data, training, every
member's files, the report), member-steps per second, its ratio to the basic launcher and the CPU
seconds of the process and its workers (steadier than wall time on a shared machine), and checks
that every member finished "ok". Grids:

  default  the default study: beta 0, 0.01, 0.1, 1 x latent_size 2, 5, 10, 20 (16 members)
  beta8    eight betas at latent_size=10 (0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1)

Targets on an otherwise idle 2-core machine: batched at most 0.3x basic for `default`, at most
0.35x for `beta8`. Run it alone: other processes on the same cores make the figures meaningless.

  python benchmarks/sweep_speed.py [--grid default|beta8] [--launchers basic,joblib,batched]
                                   [--repeat 1] [--steps 1024] [--device cpu] [extra overrides ...]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GRIDS = {
    "default": [],  # `vae sweep` with no swept key runs conf/vae_sweep/grids/default.yaml
    "beta8": ["beta=0,0.001,0.003,0.01,0.03,0.1,0.3,1", "latent_size=10"],
}
MEMBERS = {"default": 16, "beta8": 8}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished child process, its workers included
    return usage.ru_utime + usage.ru_stime


def run_sweep(launcher: str, grid: list[str], extra: list[str], folder: Path) -> tuple[float, float, pd.DataFrame]:
    """Wall and CPU seconds of one `vae sweep` process, and its sweep.csv."""
    command = [sys.executable, "-m", "vaecli", "sweep", *grid, *extra, f"hydra/launcher={launcher}"]
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([*command, f"hydra.sweep.dir={folder}"], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"{launcher}: `vae sweep` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, cpu, pd.read_csv(folder / "sweep.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--launchers", default="basic,joblib,batched")
    parser.add_argument("--repeat", type=int, default=1, help="runs per launcher; the median wall time counts")
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every sweep")
    args = parser.parse_args()
    extra = [f"train.steps={args.steps}", f"device={args.device}", *args.overrides]
    launchers = args.launchers.split(",")
    members = MEMBERS[args.grid]
    print(f"grid {args.grid} ({members} members x {args.steps} steps), device {args.device}, {args.repeat} run(s) each")
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    elbo: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeat):
            for launcher in launchers:  # interleaved, so a slow spell on the machine hits every launcher
                folder = Path(scratch) / f"{launcher}-{repeat}"
                wall, cpu, table = run_sweep(launcher, GRIDS[args.grid], extra, folder)
                if len(table) != members or set(table.status) != {"ok"}:
                    sys.exit(f"{launcher}: expected {members} members ok, got {table.status.value_counts().to_dict()}")
                walls.setdefault(launcher, []).append(wall)
                cpus.setdefault(launcher, []).append(cpu)
                elbo[launcher] = float(table.test_neg_elbo_nats.mean())
                print(f"  {launcher:<8} run {repeat + 1}: {wall:6.1f} s wall, {cpu:6.1f} s cpu")
    wall = {launcher: statistics.median(times) for launcher, times in walls.items()}
    cpu = {launcher: statistics.median(times) for launcher, times in cpus.items()}
    print(f"\n{'launcher':<10}{'wall s':>9}{'member-steps/s':>16}{'x basic':>9}{'cpu s':>9}{'mean test -ELBO':>17}")
    for launcher in launchers:
        ratio = f"{wall[launcher] / wall['basic']:.2f}" if "basic" in wall else "-"
        rate = members * args.steps / wall[launcher]
        print(
            f"{launcher:<10}{wall[launcher]:>9.1f}{rate:>16.0f}{ratio:>9}{cpu[launcher]:>9.1f}{elbo[launcher]:>17.2f}"
        )


if __name__ == "__main__":
    main()
