"""`vae encode`: a model's posterior means and scales for a split, with the images' labels, in one file.

The file is NumPy's NPZ: numpy reads it with no other package (``np.load(path)``), pandas in one
line (``pd.DataFrame(np.load(path)["loc"])``), and it holds arrays of any shape beside each other
(codes, labels, and later a dataset's factor values). Parquet would need pyarrow, a large extra,
for a table of floats that NPZ stores as compactly.

Arrays: ``loc`` and ``scale`` (images x latent_size, float32: q(z|x) = N(loc, scale^2)),
``label`` (int64), ``index`` (each image's position in its split), and one-element arrays that say
what they are: ``split``, ``dataset``, ``binarize``, ``checkpoint`` and ``step``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vaecli.atomic import atomic_write_bytes
from vaecli.config.checks import check_count, check_split
from vaecli.data.registry import DATASETS
from vaecli.data.tensors import binarize_split
from vaecli.errors import RunError, UsageError, first_line
from vaecli.runfolder import checkpoint
from vaecli.runfolder.checkpoint import Loaded

SUFFIX = ".npz"


def codes(loaded: Loaded, split: str, n: int | None, data_root: str | None) -> dict[str, np.ndarray]:
    """The arrays of `vae encode` for the first ``n`` images of ``split`` (all when None), as the run
    sees them (binarised as its data says)."""
    data = loaded.dataset(split, None, data_root)
    if n is not None and n > len(data):
        raise UsageError(f"--n {n} is beyond the {split} split's {len(data)} images; pass --n {len(data)} or less")
    count = len(data) if n is None else n
    first = data.images.head(count) if hasattr(data.images, "head") else data.images[:count]  # packed: stays packed
    images = binarize_split(first, str(loaded.config.data.binarize), train=split == "train")
    posterior = loaded.encode(images)
    factors = {} if data.factors is None else {"factors": data.factors[:count].numpy().astype(np.int64)}
    names = getattr(DATASETS.entry(str(loaded.config.data.name)), "names", None)
    if factors and names is not None:
        factors["factor_names"] = np.array(list(names))
    return {
        **factors,
        "loc": posterior.loc.float().numpy(),
        "scale": posterior.scale.float().numpy(),
        "label": data.labels[:count].numpy().astype(np.int64),
        "index": np.arange(count, dtype=np.int64),
        "split": np.array([split]),
        "dataset": np.array([str(loaded.config.data.name)]),
        "binarize": np.array([str(loaded.config.data.binarize)]),
        "checkpoint": np.array([str(loaded.file)]),
        "step": np.array([int(checkpoint.load(loaded.file)["step"])], dtype=np.int64),
    }


def write_codes(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """The NPZ, written whole or not at all (a temporary file renamed into place)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or first_line(error)}") from None
    return path


def encode_checkpoint(
    target: str, split: str, n: int | None, out: str | None, device: str, data_root: str | None
) -> Path:
    """``vae encode``: every check before the model is read, the file written under the run's lock when
    it goes into the run folder (its one writer)."""
    from vaecli.runfolder import lock

    check_split(split)
    if n is not None:
        check_count(n, "--n")
    if out is not None and Path(out).suffix.lower() != SUFFIX:
        raise UsageError(f"--out {out} must end in {SUFFIX}")
    loaded = checkpoint.load_model(target, device)
    path = Path(out).expanduser() if out is not None else loaded.run_dir / f"codes-{split}{SUFFIX}"
    arrays = codes(loaded, split, n, data_root)
    if out is not None:
        return write_codes(arrays, path)
    with lock.Locked(loaded.run_dir):
        return write_codes(arrays, path)
