"""The picture commands: ``vae reconstruct | traverse | sample | interpolate | embed``.

Each checks its options, rebuilds the model from its checkpoint (``checkpoint.load_model``),
asks ``latents`` what to decode and ``images``/``plots`` to draw it, and names the file.
Bad input raises :class:`UsageError` (exit code 2); input that is fine but cannot be served
(no dataset files, an unwritable ``--out``) raises :class:`RunError` (exit code 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vaecli.config.checks import check_count, check_split
from vaecli.errors import RunError, UsageError, first_line
from vaecli.inspect import plots
from vaecli.inspect.images import AXES, ROW_LABELS, grid_image, labelled_grid, tick
from vaecli.measure import latents
from vaecli.runfolder.checkpoint import Loaded, load_model

MODES = ("grid", "rows", "map")
TILE_SUFFIXES = (".png",)
GIF_FRAME_MS = 150  # each step along the range shown this long in a --gif traversal
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
EMBED_INCHES = (6.0, 5.0)
EMBED_DPI = 120


@dataclass
class Options:
    """What every inspection command takes."""

    checkpoint: str
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None


# ----------------------------------------------------------------------------- data


def pick_images(loaded: Loaded, split: str, indices: Sequence[int], data_root: str | None) -> torch.Tensor:
    """Images ``indices`` of a split, or a one-line error naming the index that is too large."""
    check_split(split)
    if min(indices) < 0:
        raise UsageError(f"index {min(indices)} is negative; images are numbered from 0")
    data = loaded.dataset(split, max(indices) + 1, data_root)
    too_large = [index for index in indices if index >= len(data)]
    if too_large:
        raise UsageError(f"index {too_large[0]} is beyond the {split} split's {len(data)} images (0..{len(data) - 1})")
    return data.images[list(indices)]


def check_dims(dims: Sequence[int], latent_size: int, option: str = "--dims") -> None:
    beyond = [dim for dim in dims if dim >= latent_size]
    if beyond:
        raise UsageError(
            f"{option} {beyond[0]} is beyond this model's latent dims 0..{latent_size - 1} (latent_size={latent_size})"
        )
    if len(set(dims)) != len(dims):
        raise UsageError(f"{option} {','.join(map(str, dims))} repeats a dim")


# ----------------------------------------------------------------------------- output


def check_out(out: str | None, suffixes: Sequence[str]) -> None:
    if out is not None and Path(out).suffix.lower() not in suffixes:
        raise UsageError(f"--out {out} must end in {' or '.join(suffixes)}")


def out_path(options: Options, loaded: Loaded, command: str, *parts: str, suffix: str = ".png") -> Path:
    """``--out``, or ``<run folder>/<command>-<options>.png`` such as ``traverse-dims0,1.png``."""
    if options.out is not None:
        return Path(options.out).expanduser()
    return loaded.run_dir / ("-".join([command, *(part for part in parts if part)]) + suffix)


def write_gif(frames: Sequence[Image.Image], path: Path) -> Path:
    """An animated GIF that loops for ever, each frame :data:`GIF_FRAME_MS` long."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        first, *rest = frames
        first.save(path, save_all=True, append_images=rest, duration=GIF_FRAME_MS, loop=0)
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or first_line(error)}") from None
    return path


def write(image: Image.Image, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or first_line(error)}") from None
    return path


def joined(values: Sequence[Any]) -> str:
    return ",".join(str(value) for value in values)


def scaled(scale: int, default: int) -> str:
    return f"x{scale}" if scale != default else ""


def generator(seed: int) -> torch.Generator:
    """CPU random numbers, so a seed gives the same picture on every device."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- commands


def reconstruct(
    options: Options,
    split: str = "test",
    n: int | None = None,
    indices: Sequence[int] = (),
    sample: bool = False,
    scale: int = 1,
) -> Path:
    """Originals in the top row, their reconstructions (decoder means) below."""
    check_split(split)
    check_out(options.out, TILE_SUFFIXES)
    check_count(scale, "--scale")
    if n is not None and indices:
        raise UsageError("give --n or --indices, not both")
    if n is not None:
        check_count(n, "--n")
    chosen = list(indices) if indices else list(range(8 if n is None else n))
    loaded = load_model(options.checkpoint, options.device)
    originals = pick_images(loaded, split, chosen, options.data_root)
    rebuilt = latents.reconstructions(loaded.model, originals, sample, generator(options.seed))
    which = f"i{joined(chosen)}" if indices else f"n{len(chosen)}"
    path = out_path(
        options, loaded, "reconstruct", split, which, f"sample-seed{options.seed}" if sample else "", scaled(scale, 1)
    )
    return write(grid_image(torch.cat([originals, rebuilt]), len(chosen), scale), path)


def sample(options: Options, n: int = 8, scale: int = 1) -> Path:
    """An n x n grid of decoder means for z drawn from the prior."""
    check_out(options.out, TILE_SUFFIXES)
    check_count(n, "--n")
    check_count(scale, "--scale")
    loaded = load_model(options.checkpoint, options.device)
    images = latents.prior_draws(loaded.model, n * n, generator(options.seed))
    path = out_path(options, loaded, "sample", f"n{n}", f"seed{options.seed}", scaled(scale, 1))
    return write(grid_image(images, n, scale), path)


def interpolate(
    options: Options, between: tuple[int, int] = (0, 1), steps: int = 10, split: str = "test", scale: int = 1
) -> Path:
    """Two originals at the ends, decoder means along the line between their posterior means inside."""
    check_split(split)
    check_out(options.out, TILE_SUFFIXES)
    check_count(steps, "--steps", 2)
    check_count(scale, "--scale")
    loaded = load_model(options.checkpoint, options.device)
    first, second = pick_images(loaded, split, between, options.data_root)
    line = latents.interpolation(loaded.model, first, second, steps)
    path = out_path(
        options, loaded, "interpolate", split, joined(between), f"steps{steps}" if steps != 10 else "", scaled(scale, 1)
    )
    return write(grid_image(torch.cat([first[None], line, second[None]]), steps + 2, scale), path)


def traverse(
    options: Options,
    mode: str = "grid",
    dims: Sequence[int] | None = None,
    span: tuple[float, float] | None = None,
    steps: int = 10,
    around: int | None = None,
    split: str = "test",
    scale: int = 2,
    gif: bool = False,
) -> Path:
    """The seed's traversal (``grid``), one row per dim ordered by KL (``rows``), or the 2-D map;
    ``gif``: the rows as an animation, one frame per step along the range."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode} is not one of {', '.join(MODES)}")
    if gif and mode != "rows":
        raise UsageError(f"--gif animates --mode rows (every dim a row, a frame per step); drop --mode {mode}")
    check_split(split)
    check_out(options.out, (".gif",) if gif else TILE_SUFFIXES)
    check_count(steps, "--steps", 2)
    check_count(scale, "--scale")
    loaded = load_model(options.checkpoint, options.device)
    if mode == "map":
        return traverse_map(options, loaded, dims, span, steps, around, scale)
    low, high = span or (-1.0, 1.0)
    values = torch.linspace(low, high, steps)
    center = None
    if around is not None:
        center = latents.posterior_means(loaded.model, pick_images(loaded, split, [around], options.data_root))[0]
    parts = [
        f"range{low:g},{high:g}" if span is not None and (low, high) != (-1.0, 1.0) else "",
        f"steps{steps}" if steps != 10 else "",
        "" if around is None else f"around{around}" if split == "test" else f"around-{split}{around}",
        scaled(scale, 2),
    ]
    note = "others at 0" if around is None else f"others at {split} image {around}"
    if mode == "grid":
        image, name = traverse_grid(loaded, dims, values, center, note, scale)
    elif gif:
        frames, name = traverse_frames(loaded, dims, values, center, options.data_root, scale)
        return write_gif(frames, out_path(options, loaded, "traverse", name, *parts, suffix=".gif"))
    else:
        image, name = traverse_rows(loaded, dims, values, center, note, options.data_root, scale)
    return write(image, out_path(options, loaded, "traverse", name, *parts))


def traverse_grid(
    loaded: Loaded, dims: Sequence[int] | None, values: torch.Tensor, center: torch.Tensor | None, note: str, scale: int
) -> tuple[Image.Image, str]:
    latent_size = loaded.model.latent_size
    dims = tuple(dims) if dims is not None else (0, 1)
    if latent_size == 1:
        raise UsageError("this model has latent_size=1, one dim only: use --mode rows")
    if len(dims) != 2:
        raise UsageError(f"--mode grid takes two dims, like --dims 0,1; got {joined(dims)}")
    check_dims(dims, latent_size)
    steps, labels = len(values), [tick(value) for value in values.tolist()]
    images = latents.traversal_grid(loaded.model, dims, float(values[0]), float(values[-1]), steps, center)
    title = f"columns: z{dims[1]}   rows: z{dims[0]}   ({note})"
    image = labelled_grid(images, steps, scale, AXES, labels, labels, title)
    return image, f"dims{joined(dims)}"


def kl_ordered_sweeps(
    loaded: Loaded, dims: Sequence[int] | None, values: torch.Tensor, center: torch.Tensor | None, data_root: str | None
) -> tuple[torch.Tensor, list[str], str]:
    """Each chosen dim swept alone over ``values``, the dims that carry the most KL (the used ones)
    first: the tiles (a row per dim), each row's label with its test-mean KL, and the file name part."""
    latent_size = loaded.model.latent_size
    chosen = list(dims) if dims is not None else list(range(latent_size))
    check_dims(chosen, latent_size)
    test = loaded.dataset("test", loaded.config.data.get("test_limit"), data_root)
    kl = latents.kl_per_dimension(loaded.model, test.images)
    order = sorted(chosen, key=lambda dim: -float(kl[dim]))
    images = latents.dimension_sweeps(loaded.model, order, values, center)
    row_labels = [f"z{dim}  KL {float(kl[dim]):.2f}" for dim in order]
    return images, row_labels, "rows" + (f"-dims{joined(chosen)}" if dims is not None else "")


def traverse_rows(
    loaded: Loaded,
    dims: Sequence[int] | None,
    values: torch.Tensor,
    center: torch.Tensor | None,
    note: str,
    data_root: str | None,
    scale: int,
) -> tuple[Image.Image, str]:
    """One row per dim, sweeping it alone, rows ordered by KL."""
    images, row_labels, name = kl_ordered_sweeps(loaded, dims, values, center, data_root)
    title = f"each row sweeps one dim ({note}); KL in nats, test mean"
    image = labelled_grid(images, len(values), scale, ROW_LABELS, [tick(v) for v in values.tolist()], row_labels, title)
    return image, name


def traverse_frames(
    loaded: Loaded,
    dims: Sequence[int] | None,
    values: torch.Tensor,
    center: torch.Tensor | None,
    data_root: str | None,
    scale: int,
) -> tuple[list[Image.Image], str]:
    """``--gif``: frame k shows every dim's row at the k-th value, rows ordered by KL as ``--mode rows``."""
    images, row_labels, name = kl_ordered_sweeps(loaded, dims, values, center, data_root)
    steps = len(values)
    frames = [
        labelled_grid(images[step::steps], 1, scale, ROW_LABELS, [tick(value)], row_labels)  # each dim at value
        for step, value in enumerate(values.tolist())
    ]
    return frames, name


def traverse_map(
    options: Options,
    loaded: Loaded,
    dims: Sequence[int] | None,
    span: tuple[float, float] | None,
    steps: int,
    around: int | None,
    scale: int,
) -> Path:
    """Decoder means over the prior's 5%..95% quantiles of z0 (columns) and z1 (rows, high at top)."""
    latent_size = loaded.model.latent_size
    if latent_size != 2:
        raise UsageError(
            f"--mode map needs a model with latent_size=2; this one has latent_size={latent_size}: "
            "use --mode grid or --mode rows"
        )
    given = [name for name, value in (("--dims", dims), ("--range", span), ("--around", around)) if value is not None]
    if given:
        raise UsageError(f"--mode map takes no {given[0]}: it spans the prior's 5%..95% quantiles of z0 and z1")
    images, columns, rows = latents.latent_map(loaded.model, steps)
    image = labelled_grid(
        images,
        steps,
        scale,
        AXES,
        [tick(v) for v in columns.tolist()],
        [tick(v) for v in rows.tolist()],
        "columns: z0   rows: z1   (prior quantiles 5%..95%)",
    )
    path = out_path(options, loaded, "traverse", "map", f"steps{steps}" if steps != 10 else "", scaled(scale, 2))
    return write(image, path)


def embed(options: Options, n: int = 5000, dims: Sequence[int] | None = None, split: str = "test") -> Path:
    """Posterior means of the first ``n`` images as a scatter coloured by label (plotnine)."""
    check_split(split)
    check_out(options.out, PLOT_SUFFIXES)
    check_count(n, "--n")
    loaded = load_model(options.checkpoint, options.device)
    latent_size = loaded.model.latent_size
    if dims is None and latent_size != 2:
        raise UsageError(
            f"vae embed plots 2-D latents; this model has latent_size={latent_size}: "
            "pass --dims 0,1 to plot two of them"
        )
    chosen = tuple(dims) if dims is not None else (0, 1)
    if len(chosen) != 2:
        raise UsageError(f"--dims takes two dims for a scatter, like --dims 0,1; got {joined(chosen)}")
    check_dims(chosen, latent_size)
    data = loaded.dataset(split, n, options.data_root)
    means = latents.posterior_means(loaded.model, data.images)
    path = out_path(options, loaded, "embed", split, f"n{len(data)}", f"dims{joined(chosen)}" if dims else "")
    title = f"posterior means of {len(data)} {split} images ({loaded.config.data.name})"
    plot = plots.scatter(
        means[:, chosen[0]],
        means[:, chosen[1]],
        data.labels,
        chosen,
        title,
        "digit" if loaded.config.data.name == "mnist" else "label",
    )
    try:
        plots.save_plot(plot, path, width=EMBED_INCHES[0], height=EMBED_INCHES[1], dpi=EMBED_DPI)
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or first_line(error)}") from None
    return path


def embed_size() -> tuple[int, int]:
    """(height, width) in pixels of ``vae embed``'s PNG."""
    return round(EMBED_INCHES[1] * EMBED_DPI), round(EMBED_INCHES[0] * EMBED_DPI)
