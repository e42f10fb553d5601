"""data=folder: a folder of real image files (made here with Pillow) as a dataset, decoded once and cached."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from vaecli.config.hydra_bridge import compose
from vaecli.data.folder import FOLDER, SPLIT_SEED, FolderDataConfig, available_memory, check_memory
from vaecli.data.registry import DATASETS, image_shape
from vaecli.data.tensors import load_split
from vaecli.errors import RunError, UsageError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def drawing(path: Path, size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = RED, **save) -> Path:
    """A real image file: an ellipse and a rectangle on a white ground, in the format its suffix names."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=colour)
    draw.rectangle((width // 2, height // 2, width - 2, height - 2), fill=tuple(255 - c for c in colour))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return path


def solid(path: Path, colour: tuple[int, int, int] | int, size: tuple[int, int] = (40, 30)) -> Path:
    """A file of one colour (lossless formats keep it exact): which image is which can be told from its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L" if isinstance(colour, int) else "RGB", size, colour).save(path)
    return path


def options(path: Path | None, size: int = 8, channels: int = 3, **more):
    return OmegaConf.structured(
        FolderDataConfig(path=None if path is None else str(path), size=size, channels=channels, **more)
    )


def cache_files(root: Path) -> list[Path]:
    return sorted((root / "folder-cache").glob("*.pt"))


def colours(images: torch.Tensor, size: int = 8) -> list[tuple[int, ...]]:
    """Each row's mean colour in 0..255 (channel-major rows), rounded."""
    per_channel = images.reshape(len(images), -1, size * size).mean(dim=2)
    return [tuple(round(float(value) * 255) for value in row) for row in per_channel]


def test_splits_are_float_rows_in_the_unit_range_of_the_configured_shape(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    formats = [("png", {}), ("jpg", {"quality": 90}), ("bmp", {}), ("webp", {"lossless": False})]
    for i in range(10):
        suffix, save = formats[i % len(formats)]
        drawing(folder / f"p{i}.{suffix}", (40, 30) if i % 2 else (80, 100), (40 * i % 256, 90, 200), **save)
    data = options(folder, size=12)
    train, test = FOLDER.split(root, True, options=data), FOLDER.split(root, False, options=data)
    assert len(train) == 9 and len(test) == 1  # round(10 * 0.1)
    for split in (train, test):
        assert split.images[:].dtype == torch.float32 and split.images[:].shape[1] == 3 * 12 * 12
        assert float(split.images[:].min()) >= 0 and float(split.images[:].max()) <= 1
        assert (
            float(split.images[:].max()) > 0.9 and float(split.images[:].min()) < 0.4
        )  # white ground, coloured shapes
        assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0] * len(split)
    assert FOLDER.shape(data) == (3, 12, 12) == image_shape(data)
    assert FOLDER.count(root, True, data) == 9 and FOLDER.count(root, False, data) == 1
    assert FOLDER.classes(root, data) == ["."]
    assert FOLDER.where(root, data).startswith(f"10 images (1 test) from {folder.resolve()}, cached in {root}")
    assert "folder" in DATASETS.names() and DATASETS["folder"] is FOLDER
    cache = cache_files(root)[0]
    assert train.files[0].path == str(cache) and train.files[0].md5 == hashlib.md5(cache.read_bytes()).hexdigest()


def test_grey_and_colour(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    solid(folder / "red.png", RED)
    solid(folder / "test" / "blue.bmp", BLUE, size=(80, 100))
    colour = options(folder, channels=3)
    assert colours(FOLDER.split(root, True, options=colour).images[:]) == [RED]
    assert colours(FOLDER.split(root, False, options=colour).images[:]) == [BLUE]
    grey = options(folder, channels=1)
    train, test = FOLDER.split(root, True, options=grey), FOLDER.split(root, False, options=grey)
    assert train.images[:].shape == (1, 64) and FOLDER.shape(grey) == (1, 8, 8)
    assert colours(train.images[:]) == [(76,)] and colours(test.images[:]) == [(29,)]  # ITU-R 601 luma of red, blue
    assert len(cache_files(root)) == 2  # one cache per setting, side by side


def test_a_test_folder_is_the_test_split(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    for level in (10, 20, 30, 40):
        solid(folder / f"{level}.png", level)
    for level in (200, 210):
        solid(folder / "test" / f"{level}.png", level)
    data = options(folder, channels=1, test_fraction=0.5)  # a test/ folder wins over the fraction
    assert [c for (c,) in colours(FOLDER.split(root, True, options=data).images[:])] == [10, 20, 30, 40]
    assert [c for (c,) in colours(FOLDER.split(root, False, options=data).images[:])] == [200, 210]
    assert [c for (c,) in colours(FOLDER.split(root, True, limit=2, options=data).images[:])] == [10, 20]


def levels_of(root: Path, data) -> tuple[list[int], list[int]]:
    return tuple([c for (c,) in colours(FOLDER.split(root, train, options=data).images[:])] for train in (True, False))


def test_without_a_test_folder_a_fixed_fraction_is_held_out(tmp_path):
    folder = tmp_path / "pictures"
    for level in range(0, 200, 10):
        solid(folder / f"{level:03d}.png", level)
    data = options(folder, channels=1, test_fraction=0.25)
    train, test = levels_of(tmp_path / "a", data)
    assert len(test) == 5 and len(train) == 15 and not set(train) & set(test)
    assert sorted(train + test) == list(range(0, 200, 10)) and train == sorted(train)
    assert levels_of(tmp_path / "b", data) == (train, test)  # another cache, the same split (SPLIT_SEED)
    assert SPLIT_SEED == 0
    assert len(levels_of(tmp_path / "a", options(folder, channels=1, test_fraction=0.5))[1]) == 10
    solid(folder / "new.png", 255)  # a grown folder keeps its held-out images (one may give way to the new one)
    assert len(set(levels_of(tmp_path / "a", data)[1]) & set(test)) >= 4


def test_subfolders_are_classes_shared_by_both_splits(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    solid(folder / "cat" / "a.png", 10)
    solid(folder / "cat" / "deep" / "b.png", 20)  # the first folder under the root names the class
    solid(folder / "dog" / "c.png", 30)
    solid(folder / "loose.png", 40)
    solid(folder / "test" / "dog" / "d.png", 50)
    solid(folder / "test" / "cat" / "e.png", 60)
    data = options(folder, channels=1)
    assert FOLDER.classes(root, data) == [".", "cat", "dog"]
    train, test = FOLDER.split(root, True, options=data), FOLDER.split(root, False, options=data)
    assert [c for (c,) in colours(train.images[:])] == [10, 20, 30, 40] and train.labels.tolist() == [1, 1, 2, 0]
    assert [c for (c,) in colours(test.images[:])] == [60, 50] and test.labels.tolist() == [1, 2]
    split_layout = tmp_path / "split"
    solid(split_layout / "train" / "cat" / "a.png", 10)
    solid(split_layout / "train" / "dog" / "b.png", 20)
    solid(split_layout / "test" / "dog" / "c.png", 30)
    assert FOLDER.classes(root, options(split_layout)) == ["cat", "dog"]  # train/ and test/ name no class


def test_images_are_resized_by_their_shorter_side_and_centre_cropped(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    (folder / "test").mkdir(parents=True)
    wide = Image.new("RGB", (120, 40), BLUE)
    ImageDraw.Draw(wide).rectangle((0, 0, 39, 39), fill=RED)  # the left third: cropped away
    wide.save(folder / "wide.png")
    tall = Image.new("RGB", (40, 120), RED)
    ImageDraw.Draw(tall).rectangle((0, 80, 39, 119), fill=GREEN)  # the bottom third: cropped away
    tall.save(folder / "test" / "tall.png")
    data = options(folder, size=10)
    wide_pixels = FOLDER.split(root, True, options=data).images[:].reshape(3, 10, 10)
    tall_pixels = FOLDER.split(root, False, options=data).images[:].reshape(3, 10, 10)
    assert float(wide_pixels[2].min()) > 0.9 and float(wide_pixels[0].max()) < 0.1  # all blue, no red left
    assert float(tall_pixels[0].min()) > 0.9 and float(tall_pixels[1].max()) < 0.1  # all red, no green left


def test_exif_orientation_is_applied(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    folder.mkdir()
    photo = Image.new("RGB", (60, 20), BLUE)
    ImageDraw.Draw(photo).rectangle((0, 0, 59, 9), fill=RED)  # red top half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the red half on the right
    photo.save(folder / "photo.jpg", exif=exif, quality=95)
    solid(folder / "test" / "other.png", GREEN)
    pixels = FOLDER.split(root, True, options=options(folder, size=8)).images[:].reshape(3, 8, 8)
    assert float(pixels[0, :, -2:].mean()) > 0.8 and float(pixels[2, :, -2:].mean()) < 0.2  # right: red
    assert float(pixels[2, :, :2].mean()) > 0.8 and float(pixels[0, :, :2].mean()) < 0.2  # left: blue


def test_the_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    for i in range(6):
        drawing(folder / f"p{i}.png", colour=(30 * i, 60, 90))
    data, said = options(folder), []
    assert FOLDER.ensure(root, said.append, data) == root
    (cache,) = cache_files(root)
    assert said == [f"folder: decoded 6 images from {folder.resolve()} into {cache}"]
    stamp = cache.stat().st_mtime_ns
    FOLDER.ensure(root, said.append, data)
    assert cache.stat().st_mtime_ns == stamp and len(said) == 1  # not decoded again, nothing said
    drawing(folder / "p6.png", colour=BLUE)  # a file added
    FOLDER.ensure(root, said.append, data)
    assert said[-1].startswith("folder: decoded 7 images") and len(cache_files(root)) == 2
    assert FOLDER.count(root, True, data) + FOLDER.count(root, False, data) == 7
    later = (folder / "p0.png").stat().st_mtime_ns + 10**9
    os.utime(folder / "p0.png", ns=(later, later))  # a file touched
    FOLDER.ensure(root, said.append, data)
    assert said[-1].startswith("folder: decoded 7 images") and len(cache_files(root)) == 3


def test_files_that_are_not_images_are_left_out(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    for i in range(3):
        drawing(folder / f"p{i}.PNG", colour=GREEN)  # the suffix is read whatever its case
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".hidden.png").write_bytes(b"an editor's leftover")
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "p0.png").write_bytes(b"junk")
    data = options(folder)
    assert FOLDER.count(root, True, data) + FOLDER.count(root, False, data) == 3


def refused(root: Path, data, *named: str) -> str:
    """The one-line UsageError ensure gives for ``data``, naming ``named``; nothing may be written."""
    with pytest.raises(UsageError) as caught:
        FOLDER.ensure(root, print, data)
    message = str(caught.value)
    assert "\n" not in message and all(name in message for name in named), message
    assert not root.exists()
    return message


def test_a_folder_that_cannot_be_used_is_a_one_line_usage_error(tmp_path):
    root, folder = tmp_path / "root", tmp_path / "pictures"
    assert refused(root, options(None)) == "data=folder needs data.path=DIR, the folder of images"
    refused(root, options(tmp_path / "nowhere"), "nowhere", "does not exist")
    drawing(tmp_path / "one.png")
    refused(root, options(tmp_path / "one.png"), "one.png", "is a file")
    folder.mkdir()
    (folder / "notes.txt").write_text("no pictures here")
    refused(root, options(folder), "holds no image files", ".png", ".jpg")
    drawing(folder / "a.png")
    refused(root, options(folder), "holds one image", "at least 2")
    (folder / "test").mkdir()
    refused(root, options(folder), str(folder / "test"), "holds no images")
    (folder / "a.png").rename(folder / "test" / "a.png")
    drawing(folder / "test" / "b.png")
    refused(root, options(folder), "only under test/")
    refused(root, options(folder, size=0), "data.size=0 is not allowed")


def test_a_file_that_cannot_be_decoded_is_named(tmp_path):
    root, folder = tmp_path / "root", tmp_path / "pictures"
    for i in range(3):
        drawing(folder / f"p{i}.jpg")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    refused(root, options(folder), str(folder / "bad.png"), "cannot be decoded")
    (folder / "bad.png").unlink()
    noise = Image.effect_noise((200, 200), 64).convert("RGB")  # noise: the PNG is large enough to cut
    noise.save(folder / "cut.png")
    whole = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    refused(root, options(folder), str(folder / "cut.png"), "cannot be decoded")


def test_pillow_warnings_stay_quiet_and_a_decompression_bomb_is_refused(tmp_path, monkeypatch, capfd):
    root, folder = tmp_path / "root", tmp_path / "pictures"
    drawing(folder / "p0.png", (40, 30))
    drawing(folder / "p1.png", (40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,200 pixels: a DecompressionBombWarning each
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FOLDER.ensure(root, lambda message: None, options(folder))
    assert caught == [] and capfd.readouterr().err == ""
    drawing(folder / "big.png", (80, 100))  # over twice the limit: Pillow refuses it
    with pytest.raises(UsageError, match="big.png cannot be decoded"):
        FOLDER.ensure(root, lambda message: None, options(folder))


def test_a_data_root_that_cannot_be_written_is_a_run_error(tmp_path):
    folder = tmp_path / "pictures"
    for i in range(2):
        drawing(folder / f"p{i}.png")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(RunError, match="cannot be written") as caught:
        FOLDER.ensure(tmp_path / "a-file" / "root", lambda message: None, options(folder))
    assert not isinstance(caught.value, UsageError) and "\n" not in str(caught.value)


def test_a_split_larger_than_memory_is_refused_in_one_line():
    assert available_memory() is None or available_memory() > 0
    with pytest.raises(RunError, match=r"needs \d+\.\d GiB but .* GiB are available: lower data.size"):
        check_memory(1 << 60, "the training split as float32 needs", "lower data.size or data.limit")


def test_data_folder_from_the_command_line_config(tmp_path):
    folder = tmp_path / "pictures"
    for i in range(4):
        drawing(folder / f"p{i}.webp", colour=(60 * i, 0, 0), lossless=True)
    cfg = compose(["data=folder", f"data.path={folder}", "data.size=16", "data.channels=1", f"data.root={tmp_path}"])
    assert cfg.data.name == "folder" and image_shape(cfg.data) == (1, 16, 16)
    split = load_split("folder", cfg.data.root, train=True, options=cfg.data)
    assert split.images[:].shape == (3, 256)
    with pytest.raises(UsageError, match="data.size=0 is not allowed: data.size must be >= 1"):
        compose(["data=folder", "data.size=0"])


def test_a_damaged_cache_is_decoded_again(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    solid(folder / "a.png", 100)
    solid(folder / "test" / "b.png", 200)
    data, said = options(folder, channels=1), []
    FOLDER.ensure(root, said.append, data)
    (cache,) = cache_files(root)
    cache.write_bytes(b"half a file")
    split = FOLDER.split(root, True, say=said.append, options=data)
    assert (
        colours(split.images[:]) == [(100,)] and "cannot be read" in said[-2] and said[-1].startswith("folder: decoded")
    )
    assert split.files[0].md5 == hashlib.md5(cache.read_bytes()).hexdigest()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    folder, root = tmp_path / "pictures", tmp_path / "root"
    folder.mkdir()
    for name, level in (("dim.png", 16 * 257), ("bright.png", 240 * 257)):
        Image.fromarray(np.full((30, 40), level, dtype=np.uint16)).save(folder / name)
    data = options(folder, channels=1, test_fraction=0.5)
    levels = sorted(c for train in (True, False) for (c,) in colours(FOLDER.split(root, train, options=data).images[:]))
    assert levels == [16, 240]


def test_the_training_split_is_held_as_bytes_and_cut_into_float_batches(tmp_path):
    from vaecli.data.packed import ByteImages

    folder, root = tmp_path / "pictures", tmp_path / "root"
    for i in range(6):
        drawing(folder / f"p{i}.png", colour=(30 * i, 60, 90))
    train = FOLDER.split(root, True, options=options(folder, size=8))
    assert isinstance(train.images, ByteImages) and train.images.bits.dtype.name == "uint8"
    batch = train.images.index_select(0, torch.tensor([1, 0]))
    assert batch.dtype == torch.float32 and torch.equal(batch[1], train.images[:1][0])
