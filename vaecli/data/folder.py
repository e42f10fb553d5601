"""``data=folder data.path=DIR``: a dataset of the user's own folder of images.

Every image Pillow reads under ``DIR`` (recursively; hidden files and folders aside) is turned
upright (EXIF), converted to grey (``data.channels=1``) or RGB (3), resized so its shorter side is
``data.size`` and centre-cropped to a square. Labels follow torchvision's ImageFolder: the first
folder under ``DIR`` names the class ("." for an image directly in it). ``DIR/test/`` holds the
test split when it exists; otherwise a fixed pseudo-random ``data.test_fraction`` of the images is
held out, the same for every run whatever its seed (:data:`SPLIT_SEED`).

Decoding happens once: the pixels go to ``<data.root>/folder-cache/<key>.pt``, whose key covers
the settings and every image's relative path, size and mtime, so a changed folder is read again
and an unchanged one costs a listing. Every problem with the folder is a one-line
:class:`~vaecli.errors.UsageError`, raised before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vaecli.atomic import atomic_write
from vaecli.config.schema import DataConfig, rule, schema_rules
from vaecli.data.packed import ByteImages
from vaecli.data.registry import DATASETS
from vaecli.data.sources import DataFile
from vaecli.errors import RunError, UsageError, first_line

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the cache file and of what its key covers: bump it when either changes
SPLIT_SEED = 0  # fixed, not the run's seed: every run holds out the same images of a folder
CACHE_FOLDER = "folder-cache"
TEST_FOLDER = "test"
SPLIT_FOLDERS = (TEST_FOLDER, "train")  # stripped from a class path when test/ splits the data
DECODE_CHUNK = 256  # images handed to the decoding threads at a time
COMMON_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class FolderDataConfig(DataConfig):
    """``data=folder`` (conf/data/folder.yaml): the folder's path and the size images are brought to."""

    name: str = "folder"
    path: str | None = None  # the folder of images (required): data.path=DIR
    size: int = rule(lambda value: value >= 1, "must be >= 1", default=64)  # images become size x size
    channels: int = rule(lambda value: value in (1, 3), "must be 1 (grey) or 3 (colour)", default=3)
    # held out when DIR/test/ does not exist
    test_fraction: float = rule(lambda value: 0 < value < 1, "must be > 0 and < 1", default=0.1)


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes of the formats Pillow can open (its stubs, which need extra handlers, aside)."""
    from PIL import Image, ImageFile

    Image.init()
    factories = {
        suffix.lower(): Image.OPEN.get(kind, (None,))[0] for suffix, kind in Image.registered_extensions().items()
    }
    stub = lambda factory: isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)  # noqa: E731
    return frozenset(suffix for suffix, factory in factories.items() if factory is not None and not stub(factory))


@dataclass(frozen=True)
class Listing:
    """What a folder holds now, in the order it is cached: each image's relative path, split and label."""

    folder: Path
    size: int
    channels: int
    files: tuple[str, ...]  # relative POSIX paths, sorted
    test: tuple[bool, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    key: str

    def cache_file(self, root: Path) -> Path:
        return Path(root).expanduser() / CACHE_FOLDER / f"{self.key}.pt"

    def count(self, train: bool) -> int:
        return sum(held != train for held in self.test)


def settings(options: Any) -> tuple[Path, int, int, float]:
    """The folder, size, channels and test fraction of a ``data`` node, checked (for callers that skip
    the config's own checks); no path is a usage error."""
    defaults = FolderDataConfig()
    if options is not None and hasattr(options, "items_ex"):  # an OmegaConf node: its schema's rules
        for key, ok, text in schema_rules(options, "data."):
            if not ok:
                raise UsageError(f"{key}={options[key[5:]]} is not allowed: {key} {text}")
    path = getattr(options, "path", None)
    if path is None or str(path).strip() == "":
        raise UsageError("data=folder needs data.path=DIR, the folder of images")
    size = int(getattr(options, "size", defaults.size))
    channels = int(getattr(options, "channels", defaults.channels))
    fraction = float(getattr(options, "test_fraction", defaults.test_fraction))
    return Path(str(path)).expanduser().resolve(), size, channels, fraction


def walk_images(folder: Path) -> list[tuple[PurePosixPath, os.stat_result]]:
    """Every image file under ``folder`` by relative path, sorted, with its stat (followed through links)."""
    readable = image_suffixes()
    found = []
    for here, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            if name.startswith(".") or Path(name).suffix.lower() not in readable:
                continue
            full = Path(here) / name
            try:
                stat = full.stat()
            except OSError as error:
                raise UsageError(f"{full} cannot be read ({error.strerror}): fix or remove it") from None
            found.append((PurePosixPath(full.relative_to(folder).as_posix()), stat))
    return sorted(found, key=lambda item: item[0])


def held_out(files: list[PurePosixPath], fraction: float) -> list[bool]:
    """A fixed pseudo-random ``fraction`` of ``files`` (at least one, never all): the images ranked by
    a hash of :data:`SPLIT_SEED` and their path, so an added image leaves the others where they were."""
    wanted = min(len(files) - 1, max(1, round(len(files) * fraction)))
    rank = sorted(range(len(files)), key=lambda i: hashlib.md5(f"{SPLIT_SEED}/{files[i]}".encode()).hexdigest())
    chosen = set(rank[:wanted])
    return [i in chosen for i in range(len(files))]


def class_names(files: list[PurePosixPath], by_folder: bool) -> list[str]:
    """Each file's class: its first folder under the root (under ``test/`` or ``train/`` when those
    folders split the data), "." for a file directly in it."""
    names = []
    for file in files:
        parts = file.parts[1:] if by_folder and len(file.parts) > 1 and file.parts[0] in SPLIT_FOLDERS else file.parts
        names.append(parts[0] if len(parts) > 1 else ".")
    return names


def list_folder(options: Any) -> Listing:
    """The folder a ``data`` node names, listed and split, its cache key computed: stats only, no decoding."""
    folder, size, channels, fraction = settings(options)
    if not folder.exists():
        raise UsageError(f"data.path={folder} does not exist: point data.path at a folder of images")
    if not folder.is_dir():
        raise UsageError(f"data.path={folder} is a file: point data.path at the folder that holds the images")
    found = walk_images(folder)
    if not found:
        common = ", ".join(suffix for suffix in COMMON_SUFFIXES if suffix in image_suffixes())
        raise UsageError(f"data.path={folder} holds no image files (read are {common} and more Pillow opens): add some")
    files = [file for file, _ in found]
    test = [len(file.parts) > 1 and file.parts[0] == TEST_FOLDER for file in files]
    by_folder = any(test)
    if (folder / TEST_FOLDER).is_dir() and not by_folder:
        hint = "put the held-out images in it, or remove it to hold out data.test_fraction of the images"
        raise UsageError(f"{folder / TEST_FOLDER} holds no images: {hint}")
    if len(files) < 2:
        raise UsageError(f"data.path={folder} holds one image: a train and a test split need at least 2")
    if all(test):
        raise UsageError(f"data.path={folder} has images only under test/: put the training images beside it")
    if not by_folder:
        test = held_out(files, fraction)
    names = class_names(files, by_folder)
    classes = sorted(set(names))
    label = {name: index for index, name in enumerate(classes)}
    stamp = [[str(file), stat.st_size, stat.st_mtime_ns] for file, stat in found]
    held = None if by_folder else fraction  # the fraction matters only when it picks the split
    text = json.dumps([FORMAT_VERSION, str(folder), size, channels, held, stamp])
    return Listing(
        folder=folder,
        size=size,
        channels=channels,
        files=tuple(str(file) for file in files),
        test=tuple(test),
        labels=tuple(label[name] for name in names),
        classes=tuple(classes),
        key=hashlib.md5(text.encode()).hexdigest(),
    )


def eight_bit(image: Any) -> Any:
    """16- and 32-bit grey images scaled to 8 bits (Pillow's own conversion clips them at 255)."""
    from PIL import Image

    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    pixels = np.asarray(image, dtype=np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (channels, size, size): upright, converted, resized and centre-cropped.

    Decoding is forced (``load``), so a truncated file is caught here and named, not trained on."""
    from PIL import Image, ImageOps

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image.draft(mode, (2 * size, 2 * size))  # JPEG: decode at a reduced scale, still >= 2x the target
            image.load()
            upright = eight_bit(ImageOps.exif_transpose(image)).convert(mode)
        fitted = ImageOps.fit(upright, (size, size), method=Image.Resampling.LANCZOS)
    except MemoryError:
        raise
    except Exception as error:  # Pillow reports a bad file in many ways (OSError, SyntaxError, ValueError, ...)
        reason = first_line(error) or type(error).__name__
        raise UsageError(f"{path} cannot be decoded as an image ({reason}): replace it or move it out") from None
    pixels = np.asarray(fitted, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_all(listing: Listing) -> np.ndarray:
    """Every image of ``listing``, in order, as one uint8 array (n, channels, size, size); threads, since
    Pillow decodes and resizes without the GIL. The first bad file in order is the one reported."""
    shape = (len(listing.files), listing.channels, listing.size, listing.size)
    check_memory(int(np.prod(shape)), "decoding the folder needs", "lower data.size")
    pixels = np.empty(shape, dtype=np.uint8)
    paths = [listing.folder / file for file in listing.files]
    decode = lambda path: decode_image(path, listing.size, listing.channels)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, palette transparency: not for the terminal
        pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        try:
            for start in range(0, len(paths), DECODE_CHUNK):  # in chunks: finished images never pile up
                for offset, image in enumerate(pool.map(decode, paths[start : start + DECODE_CHUNK])):
                    pixels[start + offset] = image
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a bad file stops the decoding at once
    return pixels


def available_memory() -> int | None:
    """Bytes the system can still hand out (MemAvailable); None where /proc/meminfo is missing."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)


def check_memory(needed: int, what: str, fix: str) -> None:
    """A one-line RunError when ``needed`` bytes exceed the memory available (no check where unknown)."""
    free = available_memory()
    if free is not None and needed > free:
        gib = 1 << 30
        raise RunError(f"{what} {needed / gib:.1f} GiB but {max(free, 0) / gib:.1f} GiB are available: {fix}")


def check_writable(folder: Path, root: Path) -> None:
    """A one-line RunError, before decoding, when the cache folder cannot be created or written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"data.root={root} cannot be written (at {existing}): set data.root to a writable folder")


def write_cache(listing: Listing, pixels: np.ndarray, cache: Path, root: Path) -> None:
    """The decoded folder, written atomically: a reader sees no cache or a whole one."""
    import torch

    payload = {
        "version": FORMAT_VERSION,
        "folder": str(listing.folder),
        "images": torch.from_numpy(pixels),
        "labels": torch.tensor(listing.labels, dtype=torch.int64),
        "classes": list(listing.classes),
        "files": list(listing.files),
        "test": torch.tensor(listing.test, dtype=torch.bool),
    }
    try:
        atomic_write(cache, lambda handle: torch.save(payload, handle))
    except OSError as error:
        reason = error.strerror or first_line(error)
        raise RunError(f"data.root={root} cannot be written ({reason}): set data.root to a writable folder") from None


def read_cache(cache: Path, listing: Listing) -> dict[str, Any]:
    """The cache's tensors, memory-mapped (a split reads only its images); ValueError if not ``listing``'s."""
    import torch

    payload = torch.load(cache, weights_only=True, mmap=True)
    expected = (len(listing.files), listing.channels, listing.size, listing.size)
    if payload.get("version") != FORMAT_VERSION or tuple(payload["images"].shape) != expected:
        raise ValueError(f"holds images of shape {tuple(payload['images'].shape)}, not {expected}")
    return payload


_md5_of: dict[tuple[str, int, int], str] = {}  # cache files this process hashed already, by path, size and mtime


def cache_md5(cache: Path) -> str:
    """MD5 of the cache file's bytes, hashed once per process while the file stays the same."""
    stat = cache.stat()
    stamp = (str(cache), stat.st_size, stat.st_mtime_ns)
    if stamp not in _md5_of:
        digest = hashlib.md5()
        with open(cache, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _md5_of[stamp] = digest.hexdigest()
    return _md5_of[stamp]


class FolderDataset:
    """The dataset interface (:mod:`vaecli.data.registry`) over a folder of images, decoded once."""

    name = "folder"
    own_split = True  # its held-out images are its own: data.train_on=all does not apply
    needs_options = True  # nothing to fetch: read from data.path when a run starts (``vae data`` says so)

    def prepare(self, root: Path, say: Callable[[str], None], options: Any) -> Listing:
        """The folder listed and its cache present: decoded and written when missing, else just found."""
        root = Path(root).expanduser()
        listing = list_folder(options)
        cache = listing.cache_file(root)
        if cache.is_file():  # said in the log only: a run reads it for each split
            log.debug(f"folder: cache {cache} is current")
            return listing
        check_writable(cache.parent, root)
        if len(listing.files) >= 1000:
            say(f"folder: decoding {len(listing.files)} images from {listing.folder} (once)")
        pixels = decode_all(listing)
        write_cache(listing, pixels, cache, root)
        say(f"folder: decoded {len(listing.files)} images from {listing.folder} into {cache}")
        return listing

    def ensure(self, root: Path, say: Callable[[str], None] = log.info, options: Any = None) -> Path:
        """Decode the folder into the cache unless a current cache exists (then: a listing and stats)."""
        self.prepare(root, say, options)
        return Path(root).expanduser()

    def split(
        self,
        root: Path,
        train: bool,
        limit: int | None = None,
        say: Callable[[str], None] | None = None,
        options: Any = None,
    ) -> Any:
        """The first ``limit`` images of one split as float rows in [0, 1], channel-major, from the cache."""
        import torch

        from vaecli.data.tensors import Split

        say = say or log.info
        listing = self.prepare(root, say, options)
        cache = listing.cache_file(root)
        try:
            payload = read_cache(cache, listing)
        except Exception as error:  # a damaged or foreign file: decode the folder again, once
            say(f"folder: cache {cache} cannot be read ({first_line(error) or type(error).__name__}); decoding again")
            cache.unlink(missing_ok=True)
            listing = self.prepare(root, say, options)
            payload = read_cache(cache, listing)
        mask = ~payload["test"] if train else payload["test"]
        chosen = torch.nonzero(mask).squeeze(1)[:limit]
        # the training split stays uint8 (a byte a sub-pixel, batches converted as they are cut); the test
        # split, evaluated whole at every test row, is held as float32
        needed = len(chosen) * listing.channels * listing.size**2 * (1 if train else 4)
        words = "the training split as uint8 needs" if train else "the test split as float32 needs"
        check_memory(needed, words, "lower data.size or data.limit")
        pixels = payload["images"].index_select(0, chosen).reshape(len(chosen), -1)
        images = ByteImages(pixels.numpy()) if train else pixels.float().div_(255.0)
        labels = payload["labels"].index_select(0, chosen).clone()
        return Split(images, labels, files=(DataFile(path=str(cache), md5=cache_md5(cache)),))

    def shape(self, options: Any = None) -> tuple[int, int, int]:
        defaults = FolderDataConfig()
        size = int(getattr(options, "size", defaults.size))
        return int(getattr(options, "channels", defaults.channels)), size, size

    def where(self, root: Path, options: Any = None) -> str:
        listing = list_folder(options)
        held = listing.count(train=False)
        return f"{len(listing.files)} images ({held} test) from {listing.folder}, cached in {listing.cache_file(root)}"

    def count(self, root: Path, train: bool, options: Any = None) -> int:
        """Images in a split: the cached split, which the listing that keys the cache describes."""
        return self.prepare(root, lambda message: None, options).count(train)

    def classes(self, root: Path, options: Any = None) -> list[str]:
        """Class names by label ("." for images directly in the folder)."""
        return list(self.prepare(root, lambda message: None, options).classes)


FOLDER = FolderDataset()
DATASETS.register("folder", FOLDER, schema=FolderDataConfig)
