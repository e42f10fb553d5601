"""model=conv on folders of real image files: training, exact resume, every picture command, the bound, bad input.

The folders hold PNG, JPEG and BMP files of shapes drawn with Pillow (grey and colour, two
sizes, with a ``test/`` subfolder and without); every run trains a real conv model for a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import invoke
from tests.test_bad_settings import assert_refused
from tests.test_resume import assert_same_run
from vaecli.runfolder import checkpoint

KINDS = ("ellipse", "rectangle")
SMALL = ["model.channels=[8,8,8,8]", "model.hidden_sizes=[32]", "train.batch_size=8", "train.progress=false"]


def draw_folder(folder: Path, count: int, size: tuple[int, int], grey: bool, test: int = 0) -> Path:
    """``count`` pictures in ``folder/<kind>/`` (and ``test`` more under ``folder/test/<kind>/``)."""
    suffixes = (".png", ".jpg", ".bmp")
    for part, number in (("", count), ("test", test)):
        for index in range(number):
            kind = KINDS[index % 2]
            mode, background = ("L", 40 + index % 5 * 30) if grey else ("RGB", (index * 37 % 256, 90, 200))
            image = Image.new(mode, size, background)
            draw, box = ImageDraw.Draw(image), (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4)
            fill = 255 if grey else (250, index * 53 % 256, 20)
            (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=fill)
            target = folder / part / kind
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / f"{index:03d}{suffixes[index % 3]}")
    return folder


def data(folder: Path, root: Path, size: int, channels: int) -> list[str]:
    return ["model=conv", "data=folder", f"data.path={folder}", f"data.root={root}", f"data.size={size}"] + [
        f"data.channels={channels}"
    ]


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, runner) -> Path:
    """A colour 64 x 64 conv run with the discretised logistic, on a folder with a test/ subfolder."""
    base = tmp_path_factory.mktemp("colour")
    folder = draw_folder(base / "pictures", 40, (80, 60), grey=False, test=12)
    run_dir = base / "run"
    overrides = data(folder, base / "root", 64, 3) + SMALL + ["model.likelihood=discretised_logistic"]
    result = invoke(runner, "train", *overrides, "train.steps=6", "eval.iwae_k=4", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


def test_a_colour_run_records_its_folder_and_draws_colour_pictures(colour_run):
    provenance = json.loads((colour_run / "provenance.json").read_text())
    assert provenance["data"]["folder"].endswith("pictures")
    [cache] = provenance["data"]["files"]
    assert cache["path"].endswith(".pt") and len(cache["md5"]) == 32
    with Image.open(colour_run / "reconstructions.png") as image:
        assert image.mode == "RGB" and image.height == 2 * (64 + 2) + 2
    result = json.loads((colour_run / "result.json").read_text())
    bound = result["final"]["test"] if "final" in result else result
    assert "log-likelihood" in json.dumps(result) and bound


@pytest.mark.parametrize(
    "command",
    [
        ["reconstruct"],
        ["sample", "--n", "3"],
        ["interpolate", "--steps", "4"],
        ["traverse"],
        ["traverse", "--mode", "rows", "--steps", "3"],
        ["traverse", "--mode", "rows", "--gif", "--steps", "3"],
        ["embed", "--dims", "0,1"],
    ],
)
def test_every_picture_command_opens_a_colour_conv_checkpoint(colour_run, runner, tmp_path, command):
    suffix = ".gif" if "--gif" in command else ".png"
    out = tmp_path / f"picture{suffix}"
    result = invoke(runner, *command, "-c", str(colour_run / "checkpoint.pt"), "--out", str(out))
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.mode in ("RGB", "RGBA", "P") and image.width > 64  # embed: a plotnine figure
        if command[0] in ("reconstruct", "sample") and suffix == ".png":
            assert image.mode == "RGB"
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 10  # colour, not grey


def test_the_bound_of_a_discretised_logistic_is_a_log_likelihood_in_bits_per_dim(colour_run, runner):
    result = invoke(runner, "evaluate", "-c", str(colour_run), "--k", "4", "--n", "8")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((colour_run / "evaluation.json").read_text())
    text = json.dumps(evaluation)
    assert "log-likelihood" in text and "bits_per_dim" in text
    assert "bits/dim" in result.stdout


@pytest.mark.parametrize(("size", "grey", "test"), [(32, True, 0), (28, True, 6)])
def test_grey_runs_at_other_sizes_train_and_resume_exactly(runner, tmp_path, size, grey, test):
    folder = draw_folder(tmp_path / "pictures", 30, (size + 10, size), grey=grey, test=test)
    overrides = data(folder, tmp_path / "root", size, 1) + SMALL
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    result = invoke(runner, "train", *overrides, "train.steps=8", f"hydra.run.dir={reference}")
    assert result.exit_code == 0, result.output
    assert invoke(runner, "train", *overrides, "train.steps=4", f"hydra.run.dir={run_dir}").exit_code == 0
    result = invoke(runner, "train", "--resume", str(run_dir), "train.steps=8")
    assert result.exit_code == 0, result.output
    assert_same_run(run_dir, reference)
    with Image.open(run_dir / "traversal.png") as image:  # torchvision writes grey tiles as three equal channels
        red, green, blue = image.convert("RGB").split()
        assert red.tobytes() == green.tobytes() == blue.tobytes()
    assert checkpoint.load(run_dir)["config"]["data"]["size"] == size


def test_a_conv_sweep_runs_its_members_one_by_one_under_the_batched_launcher_on_a_cpu(runner, tmp_path):
    """Stacked as grouped convolutions they run 1.4x slower than one by one on a CPU (benchmarks/stacked_conv.py);
    tests/test_stacked_conv.py checks the stacked trainer itself, which a GPU sweep uses."""
    folder = draw_folder(tmp_path / "pictures", 24, (40, 40), grey=False)
    sweep_dir = tmp_path / "sweep"
    result = invoke(
        runner,
        "sweep",
        *data(folder, tmp_path / "root", 32, 3),
        *SMALL,
        "train.steps=4",
        "beta=0.01,0.1",
        "hydra/launcher=batched",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.exit_code == 0, result.output
    members = sorted(path.parent for path in sweep_dir.rglob("result.json"))
    assert len(members) == 2
    assert all(json.loads((member / "result.json").read_text())["status"] == "ok" for member in members)
    assert json.loads((sweep_dir / "groups.json").read_text())["groups"] == []  # both alone, none stacked


# ----------------------------------------------------------------------------- bad input


def refused(runner, tmp_path: Path, folder: Path, *more: str):
    run_dir, root = tmp_path / "run", tmp_path / "root"
    result = invoke(
        runner, "train", *data(folder, root, 32, 3), *SMALL, "train.steps=2", *more, f"hydra.run.dir={run_dir}"
    )
    assert_refused(result, run_dir, root)
    return result.stderr


def test_an_empty_folder_is_refused(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no image" in refused(runner, tmp_path, tmp_path / "empty")


def test_a_folder_without_a_readable_image_is_refused(runner, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a picture")
    assert "no image" in refused(runner, tmp_path, folder)


def test_a_truncated_file_is_named(runner, tmp_path):
    folder = draw_folder(tmp_path / "pictures", 6, (40, 40), grey=False)
    broken = sorted(folder.rglob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert broken.name in refused(runner, tmp_path, folder)


@pytest.mark.parametrize(("setting", "words"), [("data.size=0", "data.size"), ("data.channels=2", "data.channels")])
def test_impossible_sizes_and_channel_counts_are_refused(runner, tmp_path, setting, words):
    folder = draw_folder(tmp_path / "pictures", 6, (40, 40), grey=False)
    assert words in refused(runner, tmp_path, folder, setting)


def test_a_checkpoint_whose_image_shape_differs_from_its_data_is_refused(colour_run, runner, tmp_path):
    saved = checkpoint.load(colour_run)
    folder = Path(saved["config"]["data"]["path"])
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in folder.rglob("*.png"):  # the same folder's pictures, but grey only: 1 channel, not 3
        target = moved / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").save(target)
    saved["config"]["data"]["path"] = str(moved)
    saved["config"]["data"]["channels"] = 1
    run = tmp_path / "copy"
    run.mkdir()
    import torch

    torch.save(saved, run / "checkpoint.pt")
    before = sorted(run.iterdir())
    result = invoke(runner, "reconstruct", "-c", str(run))
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "encoder.convs.0.weight has shape [8, 3, 4, 4] where the model needs [8, 1, 4, 4]" in result.stderr
    assert sorted(run.iterdir()) == before


def test_resuming_with_another_image_size_is_refused(colour_run, runner):
    before = {path: path.stat().st_mtime_ns for path in colour_run.iterdir()}
    result = invoke(runner, "train", "--resume", str(colour_run), "train.steps=8", "data.size=32")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "data.size" in result.stderr
    assert {path: path.stat().st_mtime_ns for path in colour_run.iterdir()} == before
