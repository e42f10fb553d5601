"""``data=dsprites``: the dSprites factor grid (Matthey et al. 2017), rendered by vaecli.

DeepMind's file cannot be downloaded here, so vaecli draws the same grid itself: 3 shapes
(square, ellipse, heart) x 6 scales (0.5 to 1) x 40 orientations (0 to 2 pi, both ends, so
index 0 and 39 are the same image) x 32 x 32 positions (0 to 1 across the canvas), posY varying
fastest, 737,280 binary 64 x 64 images. A pixel is on when its centre lies inside the sprite:
no anti-aliasing. The pixels are close to, not identical with, DeepMind's; every figure names
the data "dSprites factor grid, rendered by vaecli". ``data.source=deepmind`` reads DeepMind's
``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` from ``data.root`` instead.

Geometry: at scale 1 a sprite reaches less than 0.99 ``RADIUS`` = 9.9 pixels from its centre in
any orientation; centres run from 10.5 to 53.5 pixels (x = 10.5 + 43 posX, y = 10.5 + 43 posY,
y downwards), so every sprite lies inside the canvas, the outermost pixels always off. Orientation turns the sprite
anticlockwise as seen on screen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaecli.config.schema import DataConfig, choice, rule
from vaecli.data.registry import DATASETS
from vaecli.errors import UsageError

log = logging.getLogger(__name__)
SIDE = 64
SHAPES = ("square", "ellipse", "heart")
SIZES = (3, 6, 40, 32, 32)  # classes of shape, scale, orientation, posX, posY
NAMES = ("shape", "scale", "orientation", "posX", "posY")
RADIUS = 10.0  # pixels from the centre a scale-1 sprite reaches at most
RENDERED_FILE = "dsprites-rendered-v1.npy"  # packed bits (737280, 512), big bit order
DEEPMIND_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
RENDERED_MD5 = "a5e62900f8b32491a47e56a81dd89313"  # of the packed array: the same on every render
TEST_FRACTION = 0.01  # data.test_fraction's default: 7,373 held-out images


def factor_values() -> tuple[np.ndarray, ...]:
    """Each factor's values in the grid's order: shape 1..3 as DeepMind numbers them, then the rest."""
    return (
        np.arange(1.0, 4.0),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2 * math.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    )


def inside(shape: str, u, v):
    """Whether points (u, v) of the sprite's own frame (radius 1, v up) lie in the canonical shape."""
    if shape == "square":  # half-side 0.69: its corners reach 0.976
        return (u.abs() <= 0.69) & (v.abs() <= 0.69)
    if shape == "ellipse":  # semi-axes 0.98 and 0.49
        return (u / 0.98).square() + (v / 0.49).square() <= 1.0
    # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in [-1.14, 1.14], y in [-1, 1.24]: about
    # y = 0.118 it reaches 1.337, so x = 1.36 u, y = 1.36 v + 0.118 keeps it within radius 0.983
    x, y = u * 1.36, v * 1.36 + 0.118
    t, x2 = x * x + y * y - 1, x * x  # products only (no pow): IEEE-exact, the same bits on every CPU
    return t * t * t - x2 * (y * y * y) <= 0


WINDOW = 22  # pixels around a centre that a sprite of radius <= 10 can reach (the rest stay off)


def render_sprite_positions(shape: str, scale: float, angle: float):
    """The 32 x 32 positions of one (shape, scale, orientation) as bool images (1024, 64, 64), posY fastest.

    Only the WINDOW x WINDOW pixels around each centre are tested (8.5 times fewer than the canvas).
    """
    import torch

    centres = 10.5 + 43.0 * torch.tensor(np.linspace(0.0, 1.0, 32), dtype=torch.float64)  # pixels
    start = torch.clamp(torch.floor(centres - 10.5), max=SIDE - WINDOW).long()  # first row / column of each window
    pixels = start[:, None] + torch.arange(WINDOW)  # (position, window): the pixel index
    offset = (pixels + 0.5 - centres[:, None]) / (scale * RADIUS)  # from the centre, in sprite radii
    angle = math.fmod(angle, 2 * math.pi)  # 2 pi is 0 exactly: orientation 39 draws orientation 0's image
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = offset, -offset  # x right along columns; y up, against the rows
    # u = cos dx + sin dy, v = -sin dx + cos dy, broadcast to (posX, posY, row, column)
    u = (cos * dx)[:, None, None, :] + (sin * dy)[None, :, :, None]
    v = (-sin * dx)[:, None, None, :] + (cos * dy)[None, :, :, None]
    window = inside(shape, u.float(), v.float())
    images = torch.zeros(32, 32, SIDE, SIDE, dtype=torch.bool)
    rows, columns = pixels[None, :, :, None], pixels[:, None, None, :]
    images[torch.arange(32)[:, None, None, None], torch.arange(32)[None, :, None, None], rows, columns] = window
    return images.reshape(32 * 32, SIDE, SIDE)


def render_grid(say: Callable[[str], None] = lambda message: None) -> np.ndarray:
    """Every image of the grid, packed a bit a pixel: (737280, 512) uint8 in the grid's C order."""
    import torch

    _, scales, angles, _, _ = factor_values()
    packed = np.empty((math.prod(SIZES), SIDE * SIDE // 8), dtype=np.uint8)
    started, row = time.perf_counter(), 0
    with torch.inference_mode():
        for shape in SHAPES:
            for scale in scales:
                for angle in angles:
                    images = render_sprite_positions(shape, float(scale), float(angle))
                    packed[row : row + 1024] = np.packbits(images.reshape(1024, -1).numpy(), axis=1)
                    row += 1024
            say(f"dsprites: rendered the {shape}s ({time.perf_counter() - started:.0f} s)")
    return packed


def md5_of(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).data).hexdigest()


@dataclass
class DSpritesConfig(DataConfig):
    """``data=dsprites`` (conf/data/dsprites.yaml)."""

    name: str = "dsprites"
    source: str = choice(("rendered", "deepmind"), "rendered")  # deepmind: read DEEPMIND_FILE from data.root
    # the held-out share: 7,373 images at 0.01, evaluated at every test row (a seeded draw, the same in every run)
    test_fraction: float = rule(lambda value: 0 < value < 1, "must be between 0 and 1", default=TEST_FRACTION)


def dsprites_folder(root: Path) -> Path:
    return Path(root).expanduser() / "dsprites"


_verified: dict[tuple, str] = {}  # (path, size, mtime) -> MD5, checked once per process


class DSprites:
    """The dataset interface (:mod:`vaecli.data.registry`) over the rendered grid (or DeepMind's file)."""

    name = "dsprites"
    binary = True  # every pixel 0 or 1: a Bernoulli decoder's nats are a log-likelihood
    own_split = True  # its held-out images are its own: data.train_on=all does not apply
    names = NAMES  # the factors `vae evaluate --disentanglement` measures against

    @staticmethod
    def deepmind(options: Any) -> bool:
        return options is not None and str(options.get("source", "rendered")) == "deepmind"

    def file(self, root: Path, options: Any = None) -> Path:
        """The packed grid a run reads: rendered here, or DeepMind's file packed once (keyed by its size and time)."""
        if not self.deepmind(options):
            return dsprites_folder(root) / RENDERED_FILE
        stat = (Path(root).expanduser() / DEEPMIND_FILE).stat()
        return dsprites_folder(root) / f"deepmind-{stat.st_size}-{stat.st_mtime_ns}.npy"

    def ensure(self, root: Path, say: Callable[[str], None] = log.info, options: Any = None) -> Path:
        """The packed grid present in ``data.root``: rendered once (its MD5 checked against the constant),
        or DeepMind's file checked and packed once."""
        if self.deepmind(options):
            return self.ensure_deepmind(Path(root).expanduser(), say)
        path = self.file(root)
        if path.is_file() and self.md5(path) == RENDERED_MD5:
            return Path(root).expanduser()
        say(f"dsprites: rendering the factor grid (737,280 images) into {path} (once)")
        started = time.perf_counter()
        packed = render_grid(say)
        digest = md5_of(packed)
        if digest != RENDERED_MD5:
            raise RuntimeError(f"the rendered dSprites grid has MD5 {digest}, not {RENDERED_MD5}: report this")
        save_packed(path, packed, SIZES)
        say(f"dsprites: rendered in {time.perf_counter() - started:.0f} s, MD5 {digest}")
        return Path(root).expanduser()

    def ensure_deepmind(self, root: Path, say: Callable[[str], None]) -> Path:
        from vaecli.data.deepmind import read_deepmind

        source = root / DEEPMIND_FILE
        if not source.is_file():
            raise UsageError(f"data.source=deepmind reads {source}: put DeepMind's {DEEPMIND_FILE} there")
        path = self.file(root, {"source": "deepmind"})
        if not path.is_file():  # checked before anything is said or written: a wrong file is one line
            packed, sizes = read_deepmind(source)
            save_packed(path, packed, sizes)
            say(f"dsprites: checked and packed {source} into {path}")
        return root

    def md5(self, path: Path) -> str:
        """MD5 of the packed array in ``path`` (remembered per size and modification time)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _verified:
            _verified[key] = md5_of(np.load(path, mmap_mode="r"))
        return _verified[key]

    def grid(self, root: Path, options: Any = None) -> np.ndarray:
        """Every image of the grid, packed (N, 512), memory-mapped from the verified file."""
        self.ensure(root, say=lambda message: None, options=options)
        return np.load(self.file(root, options), mmap_mode="r")

    def factor_sizes(self, root: Path, options: Any = None) -> tuple[int, ...]:
        """Classes per factor: dSprites' (3, 6, 40, 32, 32), or what a DeepMind-structured file declares."""
        if not self.deepmind(options):
            return SIZES
        return tuple(json.loads(self.file(root, options).with_suffix(".json").read_text())["sizes"])

    @staticmethod
    def test_rows(fraction: float, total: int = math.prod(SIZES)) -> np.ndarray:
        """The held-out rows: a fixed draw (seed 0) of ``fraction`` of the grid, the same in every run."""
        count = max(1, round(fraction * total))
        return np.sort(np.random.default_rng(0).choice(total, size=count, replace=False))

    def split(self, root: Path, train: bool, limit: int | None = None, say: Any = None, options: Any = None):
        """One split: the training images stay packed (:class:`PackedImages`), the test images as float rows."""
        import torch

        from vaecli.data.packed import PackedImages
        from vaecli.data.sources import DataFile
        from vaecli.data.tensors import Split

        grid, sizes = self.grid(root, options), self.factor_sizes(root, options)
        held_out = self.test_rows(test_fraction(options), len(grid))
        mask = np.zeros(len(grid), dtype=bool)
        mask[held_out] = True
        rows = np.flatnonzero(~mask if train else mask)[:limit]
        images = PackedImages(np.ascontiguousarray(grid[rows]), SIDE * SIDE)
        classes = np.stack(np.unravel_index(rows, sizes), axis=1)
        labels = torch.from_numpy(classes[:, 0].astype(np.int64))  # the shape, for `vae embed`
        files = (DataFile(str(self.file(root, options)), self.md5(self.file(root, options))),)
        factors = torch.from_numpy(classes.astype(np.int64))
        return Split(images if train else images.float(), labels, files, factors=factors)

    def shape(self, options: Any = None) -> tuple[int, int, int]:
        return (1, SIDE, SIDE)

    def where(self, root: Path, options: Any = None) -> str:
        if self.deepmind(options):
            return f"DeepMind's dSprites file {Path(root).expanduser() / DEEPMIND_FILE}"
        return f"the dSprites factor grid, rendered by vaecli, in {self.file(root)}"

    def count(self, root: Path, train: bool, options: Any = None) -> int:
        total = math.prod(self.factor_sizes(root, options)) if self.deepmind(options) else math.prod(SIZES)
        test = len(self.test_rows(test_fraction(options), total))
        return total - test if train else test


def test_fraction(options: Any) -> float:
    """The run's held-out share (``data.test_fraction``), its default when no options are given."""
    return float(options.test_fraction) if options is not None else TEST_FRACTION


def save_packed(path: Path, packed: np.ndarray, sizes: tuple[int, ...]) -> None:
    """The packed grid as .npy, and its factor sizes beside it (.json), each written atomically."""
    from vaecli.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps({"sizes": list(sizes)}).encode())
    buffer = io.BytesIO()
    np.save(buffer, packed)
    atomic_write_bytes(path, buffer.getvalue())


DSPRITES = DSprites()
DATASETS.register("dsprites", DSPRITES, schema=DSpritesConfig)
