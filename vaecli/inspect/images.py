"""Every image grid the tool writes: run figures, inspection pictures and sweep montages.

Tiles are torchvision's ``make_grid`` with 2-pixel grey padding; labelled pictures add white
margins with text (PIL). Their sizes are :func:`grid_size` and :func:`labelled_size`. Images come
as flat rows (or already as (n, channels, height, width)); a row's shape follows from its length,
since every dataset gives square images: side * side values are grey, 3 * side * side colour
(3 s^2 is never a square, so the two cannot be confused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # torch and torchvision (whose import alone takes ~2.5 s) load where a grid is made
    import torch

TILE = 28  # MNIST's side, the default of the size formulas
PADDING = 2


def tile_shape(values: int) -> tuple[int, int, int]:
    """(channels, side, side) of a square image given as ``values`` numbers in a row."""
    for channels in (1, 3):
        side = math.isqrt(values // channels)
        if channels * side * side == values:
            return channels, side, side
    raise ValueError(f"{values} values per image are no square grey or colour image")


def as_tiles(images: torch.Tensor) -> torch.Tensor:
    """Rows of pixel intensities (or images already (n, c, h, w)) -> (n, c, h, w) in [0, 1] for torchvision."""
    images = images.detach().float().cpu()
    if images.dim() != 4:
        images = images.reshape(len(images), -1) if images.dim() > 1 else images.reshape(1, -1)
        images = images.reshape(-1, *tile_shape(images.shape[-1]))
    return images.clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path, columns: int) -> Path:
    """Tiles in rows of ``columns``, white-on-black as MNIST is drawn, 2-pixel padding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image

    save_image(as_tiles(images), path, nrow=columns, padding=PADDING, pad_value=0.5)
    return path


def grid_tensor(images: torch.Tensor, columns: int) -> torch.Tensor:
    from torchvision.utils import make_grid

    return make_grid(as_tiles(images), nrow=columns, padding=PADDING, pad_value=0.5)


def grid_size(rows: int, columns: int, tile: int = TILE) -> tuple[int, int]:
    """(height, width) in pixels of a grid of ``tile``-pixel images that ``save_grid`` writes."""
    return rows * (tile + PADDING) + PADDING, columns * (tile + PADDING) + PADDING


FONT_SIZE = 10  # pixels at scale 1; labels scale with the picture
MONTAGE_LABEL = 22  # pixels of label band above each cell and left of each row


@dataclass(frozen=True)
class Margins:
    """White space (pixels at scale 1) above and left of a tile grid, for labels."""

    top: int = 0
    left: int = 0


NO_MARGINS = Margins()
AXES = Margins(top=28, left=40)  # a title line and a value per column above, a value per row at left
ROW_LABELS = Margins(top=28, left=76)  # room for "z10  KL 12.34" at each row's start


def labelled_size(
    rows: int, columns: int, margins: Margins = NO_MARGINS, scale: int = 1, tile: int = TILE
) -> tuple[int, int]:
    """(height, width) in pixels of a picture this module writes.

    height = scale * (margins.top + rows * (tile + 2) + 2), width likewise with columns and margins.left:
    tiles with 2-pixel padding (``grid_size``), plus margins, all upscaled.
    """
    height, width = grid_size(rows, columns, tile)
    return scale * (margins.top + height), scale * (margins.left + width)


def grid_image(images: torch.Tensor, columns: int, scale: int = 1) -> Image.Image:
    """Tiles as a greyscale (or colour) image, the same pixels ``save_grid`` writes, upscaled by ``scale``."""
    import torch

    tiles = as_tiles(images)
    grid = grid_tensor(tiles, columns)
    if len(tiles) == 1:  # make_grid leaves a lone tile unpadded; keep grid_size's formula true
        grid = torch.nn.functional.pad(grid, (PADDING,) * 4, value=0.5)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    colour = tiles.shape[1] == 3
    array = pixels.permute(1, 2, 0).numpy() if colour else pixels[0].numpy()
    image = Image.fromarray(array, mode="RGB" if colour else "L")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def font(scale: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE * scale)


def put(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face: Any, align: str) -> None:
    """Text centred vertically on ``xy``; ``align`` says where ``xy`` is: left, centre or right."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    width, height = right - left, bottom - top
    x = {"left": xy[0], "centre": xy[0] - width / 2, "right": xy[0] - width}[align]
    draw.text((x - left, xy[1] - height / 2 - top), text, fill="black", font=face)


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
    tiles = as_tiles(images)
    tile = tiles.shape[-1]
    rows = math.ceil(len(tiles) / columns)
    height, width = labelled_size(rows, columns, margins, scale, tile)
    grid = grid_image(tiles, columns, scale)
    canvas = Image.new(grid.mode, (width, height), "white")
    canvas.paste(grid, (margins.left * scale, margins.top * scale))
    draw, face = ImageDraw.Draw(canvas), font(scale)
    pitch = (tile + PADDING) * scale
    first_x = (margins.left + PADDING + tile / 2) * scale
    first_y = (margins.top + PADDING + tile / 2) * scale
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


def montage(
    cells: dict[tuple[Any, Any], Path], rows: Sequence[Any], columns: Sequence[Any], row_key: str, column_key: str
):
    """Each cell's image in a grid, ``column_key`` values along the top and ``row_key`` values down the side."""
    pictures = {key: Image.open(path).convert("RGB") for key, path in cells.items()}
    width = max(image.width for image in pictures.values())
    height = max(image.height for image in pictures.values())
    gap, left = 6, MONTAGE_LABEL * 4
    size = (left + len(columns) * (width + gap), MONTAGE_LABEL + len(rows) * (height + gap))
    canvas = Image.new("RGB", size, "white")
    draw, face = ImageDraw.Draw(canvas), ImageFont.load_default()
    for j, column in enumerate(columns):
        draw.text((left + j * (width + gap), 4), f"{column_key}={column}", fill="black", font=face)
    for i, row in enumerate(rows):
        top = MONTAGE_LABEL + i * (height + gap)
        draw.text((2, top + height // 2 - 6), f"{row_key}={row}", fill="black", font=face)
        for j, column in enumerate(columns):
            if (row, column) in pictures:
                canvas.paste(pictures[(row, column)], (left + j * (width + gap), top))
    return canvas
