"""Dataset files: rebuilt byte-exact from the pickled split, verified, and replaced when corrupt."""

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from vaecli import datasets as sources
from vaecli.datasets import (
    IDX_FILES,
    DatasetSpec,
    DataUnavailableError,
    ensure_dataset,
    write_idx_from_pickle,
)


def idx_bytes(kind: int, array: np.ndarray) -> bytes:
    dims = np.array([kind, *array.shape], dtype=">i4").tobytes()
    return dims + array.astype(np.uint8).tobytes()


@pytest.fixture
def fixture_split(tmp_path):
    """A tiny pickled (train, valid, test) split in the classic format, and the IDX bytes it must give."""
    rng = np.random.default_rng(0)
    pixels = {
        name: rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        for name, n in (("train", 5), ("valid", 3), ("test", 4))
    }
    labels = {name: rng.integers(0, 10, size=len(array)).astype(np.int64) for name, array in pixels.items()}
    split = tuple((pixels[name].astype(np.float32) / 256, labels[name]) for name in ("train", "valid", "test"))
    packed = gzip.compress(pickle.dumps(split, protocol=2))
    train_pixels = np.concatenate([pixels["train"], pixels["valid"]]).reshape(-1, 28, 28)
    expected = {
        "train-images-idx3-ubyte": idx_bytes(2051, train_pixels),
        "train-labels-idx1-ubyte": idx_bytes(2049, np.concatenate([labels["train"], labels["valid"]])),
        "t10k-images-idx3-ubyte": idx_bytes(2051, pixels["test"].reshape(-1, 28, 28)),
        "t10k-labels-idx1-ubyte": idx_bytes(2049, labels["test"]),
    }
    return packed, expected


def test_pickled_split_rebuilds_byte_exact_idx_files(tmp_path, fixture_split):
    packed, expected = fixture_split
    write_idx_from_pickle(packed, tmp_path)
    for name in IDX_FILES:
        assert (tmp_path / name).read_bytes() == expected[name], name


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        write_idx_from_pickle(gzip.compress(pickle.dumps((Evil(), None, None))), tmp_path)


def test_corrupt_file_is_detected_and_fetched_again(tmp_path, fixture_split, monkeypatch):
    packed, expected = fixture_split
    system = tmp_path / "system"
    system.mkdir()
    for name, payload in expected.items():
        (system / f"{name}.gz").write_bytes(gzip.compress(payload))
    spec = DatasetSpec(
        "fixture",
        "Fixture",
        {name: hashlib.md5(payload).hexdigest() for name, payload in expected.items()},
        system_dirs=(str(system),),
    )
    monkeypatch.setattr(sources, "_torchvision_download", lambda *args: (_ for _ in ()).throw(OSError("offline")))
    root = tmp_path / "root"
    messages: list[str] = []
    ensure_dataset(spec, root, say=messages.append)
    raw = spec.raw_dir(root)
    assert all((raw / name).read_bytes() == expected[name] for name in IDX_FILES)

    truncated = raw / "t10k-images-idx3-ubyte"
    truncated.write_bytes(expected["t10k-images-idx3-ubyte"][:100])
    ensure_dataset(spec, root, say=messages.append)
    assert truncated.read_bytes() == expected["t10k-images-idx3-ubyte"]
    assert any("failed the checksum" in message for message in messages)


def test_no_source_gives_a_clear_error(tmp_path, monkeypatch):
    spec = DatasetSpec("fixture", "Fixture", dict.fromkeys(IDX_FILES, "0" * 32))
    monkeypatch.setattr(sources, "_torchvision_download", lambda *args: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataUnavailableError, match="put the four uncompressed IDX files under"):
        ensure_dataset(spec, tmp_path, say=lambda message: None)


def test_real_mnist_is_verified(data_root):
    assert sources.bad_files(sources.MNIST, data_root) == []
