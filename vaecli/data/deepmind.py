"""DeepMind's own dSprites file (``data.source=deepmind``), checked and read without running any code.

``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` holds ``imgs`` (N, 64, 64) uint8 in {0, 1},
``latents_classes`` and ``latents_values`` (N, 6) over (color, shape, scale, orientation, posX,
posY), and a pickled ``metadata`` dict (``latents_sizes``, ``latents_names``). Before a run uses it,
every array's shape is checked against the metadata's sizes and the rows' classes against the
grid's C order, so a file of another structure is refused in one line. The metadata pickle is
read by an unpickler that builds numpy arrays and plain containers only: a data file never runs code.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

from vaecli.errors import UsageError

ARRAYS = ("imgs", "latents_classes", "latents_values", "metadata")
LATENT_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")


class _MetadataUnpickler(pickle.Unpickler):
    """numpy arrays, dtypes and scalars, nothing else: the metadata is a dict of those (written by Python 2)."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def read_metadata(payload: bytes) -> dict:
    """The ``metadata`` member (an object array holding one dict) through the safe unpickler."""
    stream = io.BytesIO(payload)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read_header(stream)
    value = _MetadataUnpickler(stream, encoding="latin1").load()
    value = value.item() if isinstance(value, np.ndarray) else value
    if not isinstance(value, dict):
        raise UsageError("its metadata is not a dict")
    return {key.decode() if isinstance(key, bytes) else key: item for key, item in value.items()}


def read_deepmind(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """The file's images packed a bit a pixel (N, 512) and its factor sizes (shape, scale, orientation, posX, posY)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path} is not an .npz file ({error}); put DeepMind's dSprites file there") from None
    with archive:
        names = {Path(name).stem for name in archive.namelist()}
        missing = [name for name in ARRAYS if name not in names]
        if missing:
            raise UsageError(
                f"{path} has no {missing[0]!r} array: it is not DeepMind's dSprites file ({', '.join(ARRAYS)})"
            )
        metadata = read_metadata(archive.read("metadata.npy"))
        arrays = {name: np.load(io.BytesIO(archive.read(f"{name}.npy"))) for name in ARRAYS[:3]}
    return check_structure(path, arrays, metadata)


def check_structure(path: Path, arrays: dict[str, np.ndarray], metadata: dict) -> tuple[np.ndarray, tuple[int, ...]]:
    """Shapes, values and order against the metadata; the packed images and the five factor sizes."""
    sizes = tuple(int(size) for size in np.asarray(metadata.get("latents_sizes", ())).ravel())
    names = tuple(str(name.decode() if isinstance(name, bytes) else name) for name in metadata.get("latents_names", ()))
    if len(sizes) != 6 or sizes[0] != 1 or (names and names != LATENT_NAMES):
        raise UsageError(f"{path}: metadata latents_sizes {sizes} / names {names} are not dSprites' six latents")
    count, images = math.prod(sizes), arrays["imgs"]
    if images.shape != (count, 64, 64) or images.dtype != np.uint8:
        raise UsageError(f"{path}: imgs is {images.shape} {images.dtype}, not ({count}, 64, 64) uint8")
    for name in ("latents_classes", "latents_values"):
        if arrays[name].shape != (count, 6):
            raise UsageError(f"{path}: {name} is {arrays[name].shape}, not ({count}, 6)")
    expected = np.stack(np.unravel_index(np.arange(count), sizes), axis=1)
    if not np.array_equal(arrays["latents_classes"].astype(np.int64), expected):
        raise UsageError(f"{path}: latents_classes are not in the grid's order (posY fastest)")
    packed = np.empty((count, 512), dtype=np.uint8)
    for start in range(0, count, 65_536):
        chunk = images[start : start + 65_536].reshape(-1, 4096)
        if chunk.max(initial=0) > 1:
            raise UsageError(f"{path}: imgs holds values other than 0 and 1")
        packed[start : start + len(chunk)] = np.packbits(chunk, axis=1)
    return packed, sizes[1:]
