"""Look inside a trained model: rebuild it from its checkpoint, decide what to decode, draw it.

Behind ``vae reconstruct | traverse | sample | interpolate | embed``. A checkpoint is
self-contained: the config stored in it rebuilds the model, so no Hydra composition is needed.
Bad input raises :class:`InspectError` (one line, exit code 2); input that is fine but cannot
be served (no dataset files, an unwritable ``--out``) raises :class:`InspectRunError` (exit 1).

Pictures are tile grids made by ``figures.grid_tensor`` (torchvision's make_grid, 2-pixel grey
padding), saved as greyscale PNGs and optionally upscaled by an integer ``scale`` (nearest
neighbour, so pixels stay sharp). Labelled figures add white margins with text; their size
is :func:`labelled_size`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from vaecli import checkpoint, figures, views
from vaecli.config import DEVICES
from vaecli.data import Split
from vaecli.launch import first_line
from vaecli.model import VAE

SPLITS = ("test", "train")
MODES = ("grid", "rows", "map")
TILE_SUFFIXES = (".png",)
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
FONT_SIZE = 10  # pixels at scale 1; labels scale with the picture
EMBED_INCHES = (6.0, 5.0)
EMBED_DPI = 120
# matplotlib's tab10: ten hues that stay apart, one per digit
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


class InspectError(ValueError):
    """Bad input: a path, an option, or a checkpoint that does not fit its own model."""


class InspectRunError(RuntimeError):
    """The input was fine but the picture could not be made; the message says why."""


@dataclass
class Options:
    """What every inspection command takes."""

    checkpoint: str
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None


@dataclass
class Loaded:
    """A model rebuilt from a checkpoint, with the config and file it came from."""

    model: VAE
    config: Any  # OmegaConf DictConfig (attribute access, as train.build_model expects)
    file: Path

    @property
    def run_dir(self) -> Path:
        return self.file.parent


# ----------------------------------------------------------------------------- loading


def pick_device(name: str) -> torch.device:
    from vaecli.train import pick_device as train_pick_device

    if name not in DEVICES:
        raise InspectError(f"--device {name} is not one of {', '.join(DEVICES)}")
    try:
        return train_pick_device(name)
    except RuntimeError as error:
        raise InspectError(str(error).replace("device=", "--device ")) from None


def load_model(path: str | Path, device: str = "auto") -> Loaded:
    """Rebuild the model a checkpoint (or run folder) describes and load its weights.

    ``checkpoint.load`` maps tensors to the CPU whatever device wrote them, so a GPU-trained
    checkpoint opens on a CPU-only machine; the model then moves to ``device``.
    """
    target = pick_device(device)
    file = checkpoint.resolve(path)
    payload = checkpoint.load(file)
    config = stored_config(payload, file)
    model = rebuild(config, file)
    check_fit(model, payload.get("model"), config, file)
    model.load_state_dict(payload["model"])
    return Loaded(model.to(target).eval(), config, file)


def stored_config(payload: dict[str, Any], file: Path) -> Any:
    from omegaconf import OmegaConf

    config = payload.get("config")
    if not isinstance(config, dict):
        raise InspectError(f"{file} holds no config; pass a checkpoint.pt that `vae train` wrote")
    return OmegaConf.create(config)


def rebuild(config: Any, file: Path) -> VAE:
    from omegaconf.errors import OmegaConfBaseException

    from vaecli.train import build_model

    try:
        return build_model(config)
    except (OmegaConfBaseException, KeyError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        reason = first_line(str(error)) or type(error).__name__
        raise InspectError(f"{file}: its config cannot rebuild a model ({reason})") from None


def describe_shape(config: Any) -> str:
    return f"latent_size={config.latent_size}, model.hidden_sizes={list(config.model.hidden_sizes)}"


def check_fit(model: VAE, state: Any, config: Any, file: Path) -> None:
    """Name the first tensor that does not fit, instead of torch's many-line error."""
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InspectError(f"{file} holds no model weights; pass a checkpoint.pt that `vae train` wrote")
    expected = model.state_dict()
    problems = [f"{key} is missing" for key in expected if key not in state]
    problems += [
        f"{key} has shape {list(state[key].shape)} where the model needs {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    problems += [f"{key} is not part of the model" for key in state if key not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InspectError(
            f"{file}: weights do not match the model its config describes ({describe_shape(config)}): "
            f"{problems[0]}{more}"
        )


# ----------------------------------------------------------------------------- data


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise InspectError(f"--split {split} is not one of {', '.join(SPLITS)}")


def dataset(loaded: Loaded, split: str, count: int | None, data_root: str | None) -> Split:
    """The first ``count`` images of the checkpoint's own dataset (its ``data.root`` unless overridden)."""
    from vaecli.data import load_split
    from vaecli.sources import DATASETS, DataUnavailableError

    name = str(loaded.config.data.name)
    if name not in DATASETS:
        raise InspectError(f"{loaded.file} was trained on unknown dataset {name!r}")
    root = data_root or str(loaded.config.data.root)
    try:
        return load_split(name, root, train=split == "train", limit=count)
    except DataUnavailableError as error:
        raise InspectRunError(f"{first_line(str(error))}; or pass --data-root") from None


def pick_images(loaded: Loaded, split: str, indices: Sequence[int], data_root: str | None) -> torch.Tensor:
    """Images ``indices`` of a split, or a one-line error naming the index that is too large."""
    check_split(split)
    if min(indices) < 0:
        raise InspectError(f"index {min(indices)} is negative; images are numbered from 0")
    data = dataset(loaded, split, max(indices) + 1, data_root)
    too_large = [index for index in indices if index >= len(data)]
    if too_large:
        raise InspectError(
            f"index {too_large[0]} is beyond the {split} split's {len(data)} images (0..{len(data) - 1})"
        )
    return data.images[list(indices)]


def check_dims(dims: Sequence[int], latent_size: int, option: str = "--dims") -> None:
    beyond = [dim for dim in dims if dim >= latent_size]
    if beyond:
        raise InspectError(
            f"{option} {beyond[0]} is beyond this model's latent dims 0..{latent_size - 1} (latent_size={latent_size})"
        )
    if len(set(dims)) != len(dims):
        raise InspectError(f"{option} {','.join(map(str, dims))} repeats a dim")


def check_count(value: int, option: str, minimum: int = 1) -> None:
    if value < minimum:
        raise InspectError(f"{option} {value} is too small: it must be >= {minimum}")


# ----------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Margins:
    """White space (pixels at scale 1) above and left of a tile grid, for labels."""

    top: int = 0
    left: int = 0


NO_MARGINS = Margins()
AXES = Margins(top=28, left=40)  # a title line and a value per column above, a value per row at left
ROW_LABELS = Margins(top=28, left=76)  # room for "z10  KL 12.34" at each row's start


def labelled_size(rows: int, columns: int, margins: Margins = NO_MARGINS, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of a picture this module writes.

    height = scale * (margins.top + rows * 30 + 2), width = scale * (margins.left + columns * 30 + 2):
    28-pixel tiles with 2-pixel padding (``figures.grid_size``), plus margins, all upscaled.
    """
    height, width = figures.grid_size(rows, columns)
    return scale * (margins.top + height), scale * (margins.left + width)


def grid_image(images: torch.Tensor, columns: int, scale: int = 1) -> Image.Image:
    """Tiles as a greyscale image, the same pixels ``figures.save_grid`` writes, upscaled by ``scale``."""
    grid = figures.grid_tensor(images, columns)[0]
    if len(images) == 1:  # make_grid leaves a lone tile unpadded; keep grid_size's formula true
        grid = torch.nn.functional.pad(grid, (figures.PADDING,) * 4, value=0.5)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def font(scale: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE * scale)


def put(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face: Any, align: str) -> None:
    """Text centred vertically on ``xy``; ``align`` says where ``xy`` is: left, centre or right."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    width, height = right - left, bottom - top
    x = {"left": xy[0], "centre": xy[0] - width / 2, "right": xy[0] - width}[align]
    draw.text((x - left, xy[1] - height / 2 - top), text, fill=0, font=face)


def labelled_grid(
    images: torch.Tensor,
    columns: int,
    scale: int,
    margins: Margins,
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    title: str = "",
) -> Image.Image:
    """A tile grid with a label above each column and beside each row, and a title line on top."""
    rows = math.ceil(len(images) / columns)
    height, width = labelled_size(rows, columns, margins, scale)
    canvas = Image.new("L", (width, height), 255)
    canvas.paste(grid_image(images, columns, scale), (margins.left * scale, margins.top * scale))
    draw, face = ImageDraw.Draw(canvas), font(scale)
    pitch = (figures.TILE + figures.PADDING) * scale
    first_x = (margins.left + figures.PADDING + figures.TILE / 2) * scale
    first_y = (margins.top + figures.PADDING + figures.TILE / 2) * scale
    label_y, title_y, row_x = (margins.top - 7) * scale, 7 * scale, (margins.left - 4) * scale
    for column, label in enumerate(column_labels):
        put(draw, (first_x + column * pitch, label_y), label, face, "centre")
    for row, label in enumerate(row_labels):
        put(draw, (row_x, first_y + row * pitch), label, face, "right")
    if title:
        title_width = draw.textbbox((0, 0), title, font=face)[2]
        centre = (margins.left * scale + width) / 2
        put(draw, (min(max(centre, title_width / 2 + 2), width - title_width / 2 - 2), title_y), title, face, "centre")
    return canvas


def tick(value: float) -> str:
    """An axis value short enough to sit above a 28-pixel tile."""
    value = 0.0 if abs(value) < 5e-3 else value
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


# ----------------------------------------------------------------------------- output


def check_out(out: str | None, suffixes: Sequence[str]) -> None:
    if out is not None and Path(out).suffix.lower() not in suffixes:
        raise InspectError(f"--out {out} must end in {' or '.join(suffixes)}")


def out_path(options: Options, loaded: Loaded, command: str, *parts: str) -> Path:
    """``--out``, or ``<run folder>/<command>-<options>.png`` such as ``traverse-dims0,1.png``."""
    if options.out is not None:
        return Path(options.out).expanduser()
    return loaded.run_dir / ("-".join([command, *(part for part in parts if part)]) + ".png")


def write(image: Image.Image, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
    except OSError as error:
        raise InspectRunError(f"cannot write {path}: {error.strerror or first_line(str(error))}") from None
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
        raise InspectError("give --n or --indices, not both")
    if n is not None:
        check_count(n, "--n")
    chosen = list(indices) if indices else list(range(8 if n is None else n))
    loaded = load_model(options.checkpoint, options.device)
    originals = pick_images(loaded, split, chosen, options.data_root)
    rebuilt = views.reconstructions(loaded.model, originals, sample, generator(options.seed))
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
    images = views.prior_draws(loaded.model, n * n, generator(options.seed))
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
    line = views.interpolation(loaded.model, first, second, steps)
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
) -> Path:
    """The seed's traversal (``grid``), one row per dim ordered by KL (``rows``), or the 2-D map."""
    if mode not in MODES:
        raise InspectError(f"--mode {mode} is not one of {', '.join(MODES)}")
    check_split(split)
    check_out(options.out, TILE_SUFFIXES)
    check_count(steps, "--steps", 2)
    check_count(scale, "--scale")
    loaded = load_model(options.checkpoint, options.device)
    if mode == "map":
        return traverse_map(options, loaded, dims, span, steps, around, scale)
    low, high = span or (-1.0, 1.0)
    values = torch.linspace(low, high, steps)
    center = None
    if around is not None:
        center = views.posterior_means(loaded.model, pick_images(loaded, split, [around], options.data_root))[0]
    parts = [
        f"range{low:g},{high:g}" if span is not None and (low, high) != (-1.0, 1.0) else "",
        f"steps{steps}" if steps != 10 else "",
        "" if around is None else f"around{around}" if split == "test" else f"around-{split}{around}",
        scaled(scale, 2),
    ]
    note = "others at 0" if around is None else f"others at {split} image {around}"
    if mode == "grid":
        image, name = traverse_grid(loaded, dims, values, center, note, scale)
    else:
        image, name = traverse_rows(loaded, dims, values, center, note, options.data_root, scale)
    return write(image, out_path(options, loaded, "traverse", name, *parts))


def traverse_grid(
    loaded: Loaded, dims: Sequence[int] | None, values: torch.Tensor, center: torch.Tensor | None, note: str, scale: int
) -> tuple[Image.Image, str]:
    latent_size = loaded.model.latent_size
    dims = tuple(dims) if dims is not None else (0, 1)
    if latent_size == 1:
        raise InspectError("this model has latent_size=1, one dim only: use --mode rows")
    if len(dims) != 2:
        raise InspectError(f"--mode grid takes two dims, like --dims 0,1; got {joined(dims)}")
    check_dims(dims, latent_size)
    steps, labels = len(values), [tick(value) for value in values.tolist()]
    images = views.traversal_grid(loaded.model, dims, float(values[0]), float(values[-1]), steps, center)
    title = f"columns: z{dims[1]}   rows: z{dims[0]}   ({note})"
    image = labelled_grid(images, steps, scale, AXES, labels, labels, title)
    return image, f"dims{joined(dims)}"


def traverse_rows(
    loaded: Loaded,
    dims: Sequence[int] | None,
    values: torch.Tensor,
    center: torch.Tensor | None,
    note: str,
    data_root: str | None,
    scale: int,
) -> tuple[Image.Image, str]:
    """One row per dim, sweeping it alone; the dims that carry the most KL (the used ones) first."""
    latent_size = loaded.model.latent_size
    chosen = list(dims) if dims is not None else list(range(latent_size))
    check_dims(chosen, latent_size)
    test = dataset(loaded, "test", loaded.config.data.get("test_limit"), data_root)
    kl = views.kl_per_dimension(loaded.model, test.images)
    order = sorted(chosen, key=lambda dim: -float(kl[dim]))
    images = views.dimension_sweeps(loaded.model, order, values, center)
    row_labels = [f"z{dim}  KL {float(kl[dim]):.2f}" for dim in order]
    title = f"each row sweeps one dim ({note}); KL in nats, test mean"
    image = labelled_grid(images, len(values), scale, ROW_LABELS, [tick(v) for v in values.tolist()], row_labels, title)
    return image, "rows" + (f"-dims{joined(chosen)}" if dims is not None else "")


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
        raise InspectError(
            f"--mode map needs a model with latent_size=2; this one has latent_size={latent_size}: "
            "use --mode grid or --mode rows"
        )
    given = [name for name, value in (("--dims", dims), ("--range", span), ("--around", around)) if value is not None]
    if given:
        raise InspectError(f"--mode map takes no {given[0]}: it spans the prior's 5%..95% quantiles of z0 and z1")
    images, columns, rows = views.latent_map(loaded.model, steps)
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
        raise InspectError(
            f"vae embed plots 2-D latents; this model has latent_size={latent_size}: "
            "pass --dims 0,1 to plot two of them"
        )
    chosen = tuple(dims) if dims is not None else (0, 1)
    if len(chosen) != 2:
        raise InspectError(f"--dims takes two dims for a scatter, like --dims 0,1; got {joined(chosen)}")
    check_dims(chosen, latent_size)
    data = dataset(loaded, split, n, options.data_root)
    means = views.posterior_means(loaded.model, data.images)
    path = out_path(options, loaded, "embed", split, f"n{len(data)}", f"dims{joined(chosen)}" if dims else "")
    title = f"posterior means of {len(data)} {split} images ({loaded.config.data.name})"
    plot = scatter(
        means[:, chosen[0]],
        means[:, chosen[1]],
        data.labels,
        chosen,
        title,
        "digit" if loaded.config.data.name == "mnist" else "label",
    )
    try:
        figures.save_plot(plot, path, width=EMBED_INCHES[0], height=EMBED_INCHES[1], dpi=EMBED_DPI)
    except OSError as error:
        raise InspectRunError(f"cannot write {path}: {error.strerror or first_line(str(error))}") from None
    return path


def embed_size() -> tuple[int, int]:
    """(height, width) in pixels of ``vae embed``'s PNG."""
    return round(EMBED_INCHES[1] * EMBED_DPI), round(EMBED_INCHES[0] * EMBED_DPI)


def scatter(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, dims: Sequence[int], title: str, legend: str):
    import pandas as pd
    from plotnine import aes, coord_equal, geom_point, ggplot, guide_legend, guides, labs, scale_color_manual, theme_bw

    classes = sorted({*range(len(TAB10)), *labels.tolist()})  # fixed colours, whichever digits are present
    frame = pd.DataFrame({"x": x.numpy(), "y": y.numpy(), legend: pd.Categorical(labels.numpy(), categories=classes)})
    return (
        ggplot(frame, aes("x", "y", color=legend))
        + geom_point(size=1.0, alpha=0.6, stroke=0)
        + scale_color_manual(values=TAB10 * math.ceil(len(classes) / len(TAB10)))
        + coord_equal()
        + guides(color=guide_legend(override_aes={"size": 3, "alpha": 1}))
        + labs(x=f"z{dims[0]} (posterior mean)", y=f"z{dims[1]} (posterior mean)", title=title)
        + theme_bw()
    )
