"""Training speed of `vae train` against a DataLoader pipeline and the barest possible loop.

Prints steps/s at the seed config (MLP [100, 100], latent 10, batch 64) for, in one process:
  tool       vaecli.run.loop.train_model's loop (shuffled batches, fused Adam), evaluation time excluded
  tool+eval  the same, counting its scheduled test-set evaluations
  dataloader torchvision MNIST + DataLoader(batch_size=64, shuffle=True), same model, plain Adam
  bare       tensors in memory, same model, plain Adam, F.binary_cross_entropy_with_logits
and then the wall time of whole processes: `vae train` against a bare script that imports,
loads the data, trains 1024 steps and evaluates the test set once.

Run:  python benchmarks/train_speed.py [--repeats 3] [--steps 1024] [--no-process]
Other torch processes on the same cores make every figure meaningless; run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

BATCH, HIDDEN, LATENT, PIXELS = 64, 100, 10, 784


def bare_model() -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(
        nn.Linear(PIXELS, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 2 * LATENT),
    )
    decoder = nn.Sequential(
        nn.Linear(LATENT, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, PIXELS),
    )
    return encoder, decoder


def bare_step(encoder, decoder, optimizer, x, beta=0.01):
    loc, raw = encoder(x).chunk(2, dim=-1)
    scale = F.softplus(raw) + 1e-4
    z = loc + scale * torch.randn_like(scale)
    reconstruction = F.binary_cross_entropy_with_logits(decoder(z), x)
    kl = (0.5 * (scale.square() + loc.square() - 1) - scale.log()).mean()
    loss = reconstruction + beta * kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def time_bare(images: torch.Tensor, steps: int) -> float:
    encoder, decoder = bare_model()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    batches = len(images) // BATCH
    started = time.perf_counter()
    for step in range(steps):
        start = (step % batches) * BATCH
        bare_step(encoder, decoder, optimizer, images[start : start + BATCH])
    return steps / (time.perf_counter() - started)


def time_dataloader(root: str, steps: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    encoder, decoder = bare_model()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    done, started = 0, time.perf_counter()
    while done < steps:
        for x, _ in loader:
            bare_step(encoder, decoder, optimizer, x.view(len(x), -1))
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - started)


def time_tool(root: str, steps: int) -> tuple[float, float]:
    from vaecli.config.hydra_bridge import compose
    from vaecli.run.loop import train_model

    cfg = compose([f"data.root={root}", f"train.steps={steps}", "train.progress=false"])
    with tempfile.TemporaryDirectory() as folder:
        result = train_model(cfg, Path(folder), say=lambda message: None)
    return steps / (result.seconds - result.eval_seconds), steps / result.seconds


BARE_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from torch.nn import functional as F
    from torchvision.datasets import MNIST
    sys.path.insert(0, {here!r})
    from train_speed import bare_model, bare_step
    root, steps = {root!r}, {steps}
    images = MNIST(root, train=True).data.view(-1, 784).float() / 255
    test = MNIST(root, train=False).data.view(-1, 784).float() / 255
    encoder, decoder = bare_model()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    for step in range(steps):
        start = (step % (len(images) // 64)) * 64
        bare_step(encoder, decoder, optimizer, images[start : start + 64])
    with torch.no_grad():
        loc, raw = encoder(test).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-4
        logits = decoder(loc + scale * torch.randn_like(scale))
        recon = F.binary_cross_entropy_with_logits(logits, test, reduction="sum") / len(test)
        kl = (0.5 * (scale.square() + loc.square() - 1) - scale.log()).sum(-1).mean()
    print(float(recon + kl))
    """
)


def time_processes(root: str, steps: int) -> tuple[float, float]:
    here = str(Path(__file__).resolve().parent)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", BARE_PROCESS.format(here=here, root=root, steps=steps)],
        check=True,
        capture_output=True,
    )
    bare = time.perf_counter() - started
    vae = Path(sys.executable).with_name("vae")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(
            [
                str(vae),
                "train",
                f"data.root={root}",
                f"train.steps={steps}",
                "train.progress=false",
                f"hydra.run.dir={folder}/run",
            ],
            check=True,
            capture_output=True,
        )
        tool = time.perf_counter() - started
    return tool, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--root", default=None, help="data root (default: vaecli's)")
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process comparison")
    args = parser.parse_args()

    from vaecli.config.schema import default_root
    from vaecli.data.tensors import load_split

    root = str(args.root or default_root())
    images = load_split("mnist", root, train=True).images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, {args.repeats} repeats")
    time_bare(images, 64), time_dataloader(root, 16), time_tool(root, 16)  # warm-up
    figures: dict[str, list[float]] = {"tool": [], "tool+eval": [], "dataloader": [], "bare": []}
    for _ in range(args.repeats):
        loop, with_eval = time_tool(root, args.steps)
        figures["tool"].append(loop)
        figures["tool+eval"].append(with_eval)
        figures["dataloader"].append(time_dataloader(root, args.steps))
        figures["bare"].append(time_bare(images, args.steps))
    bare = statistics.median(figures["bare"])
    print(f"{'loop':<12}{'steps/s (median)':>18}{'runs':>28}{'x bare':>9}")
    for name, values in figures.items():
        runs = " ".join(f"{value:.0f}" for value in values)
        print(f"{name:<12}{statistics.median(values):>18.0f}{runs:>28}{statistics.median(values) / bare:>9.2f}")
    if not args.no_process:
        tool, bare_process = time_processes(root, args.steps)
        print(
            f"whole process: vae train {tool:.1f} s, bare script {bare_process:.1f} s, ratio {tool / bare_process:.2f}"
        )


if __name__ == "__main__":
    main()
