"""Training step rate of Burda et al.'s VAE (784-200-200-50, tanh, dynamic binarisation) by batch size.

For sizing ``experiment=burda2016_short``: for each ``--batch`` it runs ``--steps`` steps of `vae train`'s
inner loop (shuffled Batches with a DynamicBinarizer, forward, backward from the logits, fused Adam
with eps 1e-4) on real MNIST, and prints wall steps/s and CPU seconds per step (``time.process_time``:
all threads of this process together). The seed model at batch 64 runs alongside as a yardstick
(docs/speed.md's `vae train` figure: 199 steps/s on an idle 2-core machine, 2 threads).

On cores shared with other processes wall time measures the neighbours (and two threads that
wait for each other can run 50 times slower than alone); CPU time per step at ``--threads 1``
is far steadier. So the estimate of the alone rate is the yardstick's: a case's one-thread CPU
time per step relative to the seed model's, measured in the same minutes (the cases take turns),
times the seed model's alone two-thread time per step (``--seed-alone-ms``, default 1000/199).
It assumes two threads speed both models up alike; the larger model gains more from a second
thread, so the estimate errs on the slow side. Run it alone (``--threads 2``) for direct figures.

Run:  python benchmarks/preset_speed.py [--batch 20 100 250 500] [--steps 300] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaecli.config.hydra_bridge import compose
from vaecli.config.schema import default_root
from vaecli.data.tensors import Batches, DynamicBinarizer, load_split
from vaecli.models.registry import build_model
from vaecli.objectives.beta import backward_beta_elbo
from vaecli.run.loop import make_optimizer


def timed_steps(overrides: list[str], images: torch.Tensor, batch: int, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per step of the training loop for the config these overrides give."""
    cfg = compose([*overrides, f"train.batch_size={batch}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(
        model, cfg.train.lr, torch.device("cpu"), tuple(cfg.train.adam_betas), cfg.train.adam_eps
    )
    binarizer = DynamicBinarizer(0) if cfg.data.binarize == "dynamic" else None
    batches = Batches(images, batch, True, torch.Generator().manual_seed(0), binarizer)
    beta, likelihood = float(cfg.beta), str(cfg.model.likelihood)

    def step(number: int) -> None:
        x = batches.batch(number)
        q, _, p = model(x)
        optimizer.zero_grad(set_to_none=True)
        backward_beta_elbo(q, p.logits, x, beta, likelihood)
        optimizer.step()

    for number in range(1, 21):  # warm-up
        step(number)
    wall, cpu = time.perf_counter(), time.process_time()
    for number in range(21, 21 + steps):
        step(number)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[20, 100, 250, 500])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed-alone-ms", type=float, default=1000 / 199, help="the seed model's alone ms/step")
    parser.add_argument("--minutes", type=float, default=17.0, help="training time to size in epochs")
    args = parser.parse_args()
    images = load_split("mnist", default_root(), train=True).images
    cases = [("seed", [], 64)] + [("burda2016", ["experiment=burda2016"], batch) for batch in args.batch]
    print("model      batch threads  wall ms/step  CPU ms/step  CPU/seed  est. alone steps/s  images/s  epochs")
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs: dict[int, list[tuple[float, float]]] = {index: [] for index in range(len(cases))}
        for _ in range(args.repeats):  # cases take turns, so all see the same neighbours
            for index, (_, overrides, batch) in enumerate(cases):
                runs[index].append(timed_steps(overrides, images, batch, args.steps))
        seed_cpu = statistics.median(run[1] for run in runs[0])
        for index, (name, _, batch) in enumerate(cases):
            wall = statistics.median(run[0] for run in runs[index])
            cpu = statistics.median(run[1] for run in runs[index])
            alone = args.seed_alone_ms / 1e3 * cpu / seed_cpu  # seconds per step, estimated
            epochs = args.minutes * 60 / alone * batch / len(images)
            print(
                f"{name:10} {batch:5} {threads:7} {wall * 1e3:13.2f} {cpu * 1e3:12.2f} {cpu / seed_cpu:9.2f} "
                f"{1 / alone:19.1f} {batch / alone:9.0f} {epochs:7.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
