"""Training speed of `vae train` against a DataLoader pipeline and the barest possible loop.

Prints steps/s at the seed config (MLP [100, 100], latent 10, batch 64) for, in one process:
  tool       vaecli.run.loop.train_model's loop (shuffled batches, fused Adam), evaluation time excluded
  tool+eval  the same, counting its scheduled test-set evaluations
  dataloader torchvision MNIST + DataLoader(batch_size=64, shuffle=True), same model, plain Adam
  bare       tensors in memory, same model, plain Adam, F.binary_cross_entropy_with_logits
and then the wall time of whole processes: `vae train` against a bare script that imports,
loads the data, trains 1024 steps and evaluates the test set once.

With --conv it times `model=conv` instead, at 64 x 64 colour (batch 64, latent 10, Bernoulli
decoder) on `data=folder` images drawn by benchmarks/shapes_folder.py, against the barest loop of
the same architecture (plain nn.Sequential, tensors in memory, plain Adam), in images/s, with
the bare loop in channels-last memory format beside it.

Run:  python benchmarks/train_speed.py [--repeats 3] [--steps 1024] [--no-process]
      python benchmarks/train_speed.py --conv [--repeats 3] [--steps 100]
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


def bare_conv(channels: int = 3) -> tuple[nn.Module, nn.Module]:
    """Burgess et al.'s network for 64 x 64, written out: 4 convs of 32, fc 256, 256, the heads."""
    encoder = nn.Sequential(
        *(layer for fan_in in (channels, 32, 32, 32) for layer in (nn.Conv2d(fan_in, 32, 4, 2, 1), nn.ReLU())),
        nn.Flatten(),
        *(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2 * LATENT)),
    )
    decoder = nn.Sequential(
        *(nn.Linear(LATENT, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU()),
        nn.Unflatten(1, (32, 4, 4)),
        *(layer for _ in range(3) for layer in (nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU())),
        nn.ConvTranspose2d(32, channels, 4, 2, 1),
    )
    return encoder, decoder


def time_bare_conv(images: torch.Tensor, steps: int, channels_last: bool = False) -> float:
    """Images/s of the bare conv loop on (n, 3, 64, 64) tensors in memory."""
    encoder, decoder = bare_conv(images.shape[1])
    if channels_last:
        encoder, decoder = encoder.to(memory_format=torch.channels_last), decoder.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    batches = len(images) // BATCH
    started = time.perf_counter()
    for step in range(steps):
        start = (step % batches) * BATCH
        x = images[start : start + BATCH]
        loc, raw = encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(scale)
        reconstruction = F.binary_cross_entropy_with_logits(decoder(z), x)
        kl = (0.5 * (scale.square() + loc.square() - 1) - scale.log()).mean()
        optimizer.zero_grad()
        (reconstruction + 0.01 * kl).backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - started)


def time_tool_conv(folder: Path, root: str, steps: int) -> float:
    """Images/s of `vae train model=conv data=folder` (its evaluations excluded)."""
    from vaecli.config.hydra_bridge import compose
    from vaecli.run.loop import train_model

    overrides = ["model=conv", "data=folder", f"data.path={folder}", "data.size=64", f"data.root={root}"]
    cfg = compose([*overrides, f"train.steps={steps}", "train.progress=false", "train.eval_every=0"])
    with tempfile.TemporaryDirectory() as out:
        result = train_model(cfg, Path(out), say=lambda message: None)
    return steps * BATCH / (result.seconds - result.eval_seconds)


def conv_main(args: argparse.Namespace) -> None:
    import resource

    from shapes_folder import write_shapes

    from vaecli.data.tensors import load_split

    with tempfile.TemporaryDirectory() as scratch:
        folder, root = write_shapes(Path(scratch) / "shapes", 1024, 64), str(Path(scratch) / "root")
        options = {"name": "folder", "path": str(folder), "size": 64, "channels": 3, "test_fraction": 0.1}
        from omegaconf import OmegaConf

        images = load_split("folder", root, True, options=OmegaConf.create(options)).images.float().view(-1, 3, 64, 64)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, conv 64x64x3, batch {BATCH}")
        time_tool_conv(folder, root, 4), time_bare_conv(images, 4)  # warm-up
        figures: dict[str, list[float]] = {"tool": [], "bare": [], "bare channels-last": []}
        for _ in range(args.repeats):
            figures["tool"].append(time_tool_conv(folder, root, args.steps))
            figures["bare"].append(time_bare_conv(images, args.steps))
            figures["bare channels-last"].append(time_bare_conv(images, args.steps, channels_last=True))
    bare = statistics.median(figures["bare"])
    print(f"{'loop':<20}{'images/s (median)':>18}{'runs':>32}{'x bare':>9}")
    for name, values in figures.items():
        runs = " ".join(f"{value:.0f}" for value in values)
        print(f"{name:<20}{statistics.median(values):>18.0f}{runs:>32}{statistics.median(values) / bare:>9.2f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default 1024 (100 with --conv)")
    parser.add_argument("--root", default=None, help="data root (default: vaecli's)")
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process comparison")
    parser.add_argument("--conv", action="store_true", help="time model=conv at 64 x 64 colour instead")
    args = parser.parse_args()
    if args.conv:
        args.steps = args.steps or 100
        return conv_main(args)
    args.steps = args.steps or 1024

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
