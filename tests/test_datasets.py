"""Dataset files: rebuilt byte-exact from the pickled split, verified, and replaced when corrupt."""

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke
from vaecli.data import sources
from vaecli.data.sources import (
    IDX_FILES,
    DatasetSpec,
    DataUnavailableError,
    ensure_dataset,
    write_idx_from_pickle,
)
from vaecli.data.tensors import load_split


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
    with pytest.raises(DataUnavailableError, match=r"put the four IDX files \(or their .gz\) under"):
        ensure_dataset(spec, tmp_path, say=lambda message: None)


def test_real_mnist_is_verified(data_root):
    assert sources.bad_files(sources.MNIST, data_root) == []


@pytest.fixture
def no_fetching(monkeypatch):
    """Every source that could fetch files fails loudly, as on a cluster node without network."""

    def offline(*args):
        raise AssertionError("fetched although verified files were there")

    monkeypatch.setattr(sources, "_torchvision_download", offline)
    monkeypatch.setattr(sources, "_registry_fallback", offline)


def test_gz_only_root_is_verified_and_used_without_fetching(runner, gz_root, no_fetching):
    result = invoke(runner, "data", "--root", str(gz_root))
    assert result.exit_code == 0, result.output
    assert "4 verified files" in result.stdout and "fetching" not in result.stderr
    raw = sources.MNIST.raw_dir(gz_root)
    assert sorted(path.name for path in raw.iterdir()) == sorted(f"{name}.gz" for name in IDX_FILES)  # nothing added
    test = load_split("mnist", gz_root, train=False)
    assert len(test) == 10_000 and [Path(file.path).name for file in test.files] == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert [file.md5 for file in test.files] == [sources.MNIST.raw_md5[name] for name in IDX_FILES[2:]]


def test_corrupt_gz_is_not_used(tmp_path, data_root, monkeypatch):
    raw = sources.MNIST.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).symlink_to(sources.MNIST.raw_dir(data_root) / name)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + bytes(8)))
    assert sources.bad_files(sources.MNIST, tmp_path) == ["t10k-labels-idx1-ubyte"]
    monkeypatch.setattr(sources, "_sources", lambda spec: iter(()))
    with pytest.raises(DataUnavailableError, match="no verified mnist files"):
        ensure_dataset(sources.MNIST, tmp_path, say=lambda message: None)
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists()  # removed, never parsed


def test_torchvision_processed_cache_is_never_read(tmp_path, data_root):
    """torchvision's MNIST class loads processed/training.pt instead of the raw files whenever it exists."""
    import torch
    import torchvision

    raw = sources.MNIST.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).symlink_to(sources.MNIST.raw_dir(data_root) / name)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    fake = (torch.zeros(300, 28, 28, dtype=torch.uint8), torch.zeros(300, dtype=torch.int64))
    for name in ("training.pt", "test.pt"):
        torch.save(fake, processed / name)
    assert len(torchvision.datasets.MNIST(str(tmp_path), train=True)) == 300  # the trap is real
    train = load_split("mnist", tmp_path, train=True)
    assert len(train) == 60_000 and train.images.sum() > 0
    assert [Path(file.path).parent for file in train.files] == [raw, raw]
