"""vae reconstruct / traverse / sample / interpolate / embed on a real (tiny) run.

Each command works on a run folder and on its checkpoint.pt and writes a picture of the
documented pixel size; the pictures hold what they claim; every bad input is one line, exit 2.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import invoke
from vaecli.data.tensors import load_split
from vaecli.inspect import images as figures
from vaecli.inspect.commands import embed_size
from vaecli.inspect.images import AXES, ROW_LABELS, labelled_size
from vaecli.measure import latents
from vaecli.runfolder import checkpoint
from vaecli.runfolder.checkpoint import load_model


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def written(result) -> Path:
    """The path a successful command printed."""
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("wrote "), result.stdout
    path = Path(line.removeprefix("wrote "))
    assert path.is_file()
    return path


def scaled(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return size[0] * factor, size[1] * factor


@pytest.fixture(scope="module")
def latent2_run(tmp_path_factory, runner, tiny) -> Path:
    run_dir = tmp_path_factory.mktemp("latent2") / "run"
    result = invoke(runner, "train", *tiny, "latent_size=2", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


def test_labelled_size_is_the_documented_formula():
    # height = scale * (top + rows * 30 + 2), width = scale * (left + columns * 30 + 2)
    assert labelled_size(2, 8) == figures.grid_size(2, 8) == (62, 242)
    assert labelled_size(10, 10, AXES, 2) == (2 * (AXES.top + 302), 2 * (AXES.left + 302))
    assert labelled_size(3, 5, ROW_LABELS, 3) == (3 * (ROW_LABELS.top + 92), 3 * (ROW_LABELS.left + 152))


# (arguments, default file name in the run folder, (height, width) in pixels)
CASES = [
    (["reconstruct"], "reconstruct-test-n8.png", figures.grid_size(2, 8)),
    (
        ["reconstruct", "--indices", "3,17,42", "--sample", "--seed", "1"],
        "reconstruct-test-i3,17,42-sample-seed1.png",
        figures.grid_size(2, 3),
    ),
    (["traverse"], "traverse-dims0,1.png", labelled_size(10, 10, AXES, 2)),
    (
        ["traverse", "--dims", "2,5", "--range", "-3,3", "--steps", "4", "--around", "7"],
        "traverse-dims2,5-range-3,3-steps4-around7.png",
        labelled_size(4, 4, AXES, 2),
    ),
    (
        ["traverse", "--mode", "rows", "--steps", "5", "--scale", "1"],
        "traverse-rows-steps5-x1.png",
        labelled_size(10, 5, ROW_LABELS, 1),
    ),
    (["sample", "--n", "3", "--scale", "2"], "sample-n3-seed0-x2.png", scaled(figures.grid_size(3, 3), 2)),
    (["interpolate", "--between", "3,42", "--steps", "6"], "interpolate-test-3,42-steps6.png", figures.grid_size(1, 8)),
]


@pytest.mark.parametrize(("arguments", "name", "size"), CASES, ids=[case[1] for case in CASES])
def test_on_a_run_folder_the_picture_goes_beside_the_checkpoint(runner, trained_run, arguments, name, size):
    path = written(invoke(runner, *arguments, "--checkpoint", str(trained_run), "--device", "cpu"))
    assert path == trained_run / name
    assert pixels(path).shape == size


@pytest.mark.parametrize(("arguments", "name", "size"), CASES, ids=[case[1] for case in CASES])
def test_on_a_checkpoint_file_the_picture_goes_to_out(runner, trained_run, tmp_path, arguments, name, size):
    out = tmp_path / "deeper" / "picture.png"
    path = written(invoke(runner, *arguments, "-c", str(trained_run / "checkpoint.pt"), "--out", str(out)))
    assert path == out
    assert pixels(path).shape == size


def test_reconstruct_shows_the_originals_above_their_reconstructions(runner, trained_run, data_root):
    path = written(
        invoke(runner, "reconstruct", "-c", str(trained_run), "--indices", "5,0", "-o", str(trained_run / "r.png"))
    )
    test = load_split("mnist", data_root, train=False, limit=6)
    model = load_model(trained_run, "cpu").model
    top = np.stack([tile(pixels(path), 0, column) for column in range(2)])
    bottom = np.stack([tile(pixels(path), 1, column) for column in range(2)])
    expected_top = (test.images[[5, 0]] * 255 + 0.5).clamp(0, 255).to(torch.uint8).reshape(2, 28, 28).numpy()
    rebuilt = decoded_means(model, test.images[[5, 0]])
    expected_bottom = (rebuilt * 255 + 0.5).clamp(0, 255).to(torch.uint8).reshape(2, 28, 28).numpy()
    assert np.array_equal(top, expected_top)
    assert np.abs(bottom.astype(int) - expected_bottom.astype(int)).max() <= 1


def tile(image: np.ndarray, row: int, column: int, top: int = 0, left: int = 0) -> np.ndarray:
    y, x = top + 2 + row * 30, left + 2 + column * 30
    return image[y : y + 28, x : x + 28]


def test_default_traverse_is_the_training_runs_traversal_with_labels(runner, trained_run):
    path = written(invoke(runner, "traverse", "-c", str(trained_run), "--scale", "1", "-o", str(trained_run / "t.png")))
    grid = pixels(path)[AXES.top :, AXES.left :]
    assert np.array_equal(grid, pixels(trained_run / "traversal.png"))  # what `vae train` drew
    assert pixels(path)[: AXES.top].min() < 128  # the axis values are drawn above


def test_rows_come_in_order_of_kl_and_each_sweeps_one_dim(trained_run, data_root):
    model = load_model(trained_run, "cpu").model
    images = load_split("mnist", data_root, train=False, limit=256).images
    q = model.encoder(images)
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(latents.kl_per_dimension(model, images), expected.detach(), atol=1e-5)
    values = torch.linspace(-1, 1, 3)
    rows = latents.dimension_sweeps(model, [4, 1], values)
    z = torch.zeros(6, model.latent_size)
    z[:3, 4], z[3:, 1] = values, values
    assert torch.allclose(rows, model.decoder(z).probs, atol=1e-6)


def test_interpolation_runs_between_the_two_reconstructions(trained_run, data_root):
    model = load_model(trained_run, "cpu").model
    first, second = load_split("mnist", data_root, train=False, limit=2).images
    line = latents.interpolation(model, first, second, 5)
    assert line.shape == (5, 784)
    assert torch.allclose(line[0], decoded_means(model, first[None])[0], atol=1e-6)
    assert torch.allclose(line[-1], decoded_means(model, second[None])[0], atol=1e-6)


def test_sample_is_reproducible_by_seed(runner, trained_run, tmp_path):
    def draw(seed: str, name: str) -> np.ndarray:
        return pixels(
            written(invoke(runner, "sample", "-c", str(trained_run), "--seed", seed, "-o", str(tmp_path / name)))
        )

    assert np.array_equal(draw("3", "a.png"), draw("3", "b.png"))
    assert not np.array_equal(draw("3", "a.png"), draw("4", "c.png"))


def test_latent_map_and_embed_on_a_latent_size_2_model(runner, latent2_run):
    path = written(invoke(runner, "traverse", "-c", str(latent2_run), "--mode", "map", "--steps", "4"))
    assert path.name == "traverse-map-steps4.png"
    assert pixels(path).shape == labelled_size(4, 4, AXES, 2)
    path = written(invoke(runner, "embed", "-c", str(latent2_run / "checkpoint.pt"), "--n", "300"))
    assert path == latent2_run / "embed-test-n300.png"
    assert pixels(path).shape == embed_size()


def test_latent_map_spans_the_prior_quantiles_like_a_scatter(latent2_run):
    model = load_model(latent2_run, "cpu").model
    images, columns, rows = latents.latent_map(model, 3)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    assert torch.allclose(columns, quantiles) and torch.allclose(rows, quantiles.flip(0))
    top_left = model.decoder(torch.stack([columns[0], rows[0]])[None]).probs  # z0 low, z1 high
    assert torch.allclose(images[0], top_left[0], atol=1e-6)


def test_embed_plots_two_chosen_dims_of_a_larger_model(runner, trained_run, tmp_path):
    path = written(
        invoke(runner, "embed", "-c", str(trained_run), "--dims", "3,1", "--n", "200", "-o", str(tmp_path / "e.png"))
    )
    assert pixels(path).shape == embed_size()


def with_cuda_locations(source: Path, target: Path) -> Path:
    """A copy of a checkpoint whose tensors say they live on cuda:0, as if saved from a GPU."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            copy.writestr(info.filename, data)
    return target


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(runner, trained_run, tmp_path):
    path = with_cuda_locations(trained_run / "checkpoint.pt", tmp_path / "gpu.pt")
    if not torch.cuda.is_available():  # the copy really is GPU-tagged: plain loading fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_model(path, "cpu")
    assert all(parameter.device.type == "cpu" for parameter in loaded.model.parameters())
    written(invoke(runner, "sample", "-c", str(path), "--n", "2"))


def truncated(trained_run: Path, tmp_path: Path) -> Path:
    data = (trained_run / "checkpoint.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "truncated.pt"


def mismatched(trained_run: Path, tmp_path: Path) -> Path:
    """Weights of a latent_size=10 model under a config that says latent_size=4."""
    payload = checkpoint.load(trained_run)
    payload["config"]["latent_size"] = 4
    torch.save(payload, tmp_path / "mismatched.pt")
    return tmp_path / "mismatched.pt"


def foreign(trained_run: Path, tmp_path: Path) -> Path:
    """A torch file, but a bare state_dict rather than a vaecli checkpoint."""
    torch.save(checkpoint.load(trained_run)["model"], tmp_path / "weights.pt")
    return tmp_path / "weights.pt"


def configless(trained_run: Path, tmp_path: Path) -> Path:
    payload = checkpoint.load(trained_run)
    payload["config"] = {"data": payload["config"]["data"]}
    torch.save(payload, tmp_path / "configless.pt")
    return tmp_path / "configless.pt"


def newer(trained_run: Path, tmp_path: Path) -> Path:
    """A checkpoint from a future vaecli whose format this one does not know."""
    payload = checkpoint.load(trained_run)
    payload["version"] = 99
    torch.save(payload, tmp_path / "newer.pt")
    return tmp_path / "newer.pt"


def extra_tensors(trained_run: Path, tmp_path: Path) -> Path:
    """The right weights plus a tensor the model has no place for."""
    payload = checkpoint.load(trained_run)
    payload["model"]["decoder.mystery"] = torch.zeros(3)
    torch.save(payload, tmp_path / "extra.pt")
    return tmp_path / "extra.pt"


def text_file(trained_run: Path, tmp_path: Path) -> Path:
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    return tmp_path / "notes.pt"


BAD_FILES = [
    (lambda run, tmp: tmp / "missing", "does not exist"),
    (lambda run, tmp: tmp, "without checkpoint.pt"),
    (text_file, "not a readable checkpoint"),
    (truncated, "not a readable checkpoint"),
    (mismatched, "encoder.head.weight has shape [20, 100] where the model needs [8, 100]"),
    (foreign, "is not a vaecli checkpoint"),
    (configless, "its config cannot rebuild a model"),
    (newer, f"checkpoint format version 99 is newer than this vaecli reads ({checkpoint.VERSION}): upgrade vaecli"),
    (extra_tensors, "has tensors the model does not: decoder.mystery"),
]


@pytest.mark.parametrize(
    ("make", "message"),
    BAD_FILES,
    ids=["missing", "folder", "text", "truncated", "shape", "foreign", "configless", "newer", "extra"],
)
@pytest.mark.parametrize("command", ["reconstruct", "traverse", "sample", "interpolate", "embed"])
def test_a_bad_checkpoint_is_one_line_and_exit_2(runner, trained_run, tmp_path, command, make, message):
    result = invoke(runner, command, "-c", str(make(trained_run, tmp_path)))
    assert_usage_error(result, message)


BAD_OPTIONS = [
    (["traverse", "--dims", "0,10"], "--dims 10 is beyond this model's latent dims 0..9"),
    (["traverse", "--mode", "rows", "--dims", "3,12"], "--dims 12 is beyond"),
    (["embed", "--dims", "0,10"], "--dims 10 is beyond"),
    (["traverse", "--dims", "1,1"], "repeats a dim"),
    (["traverse", "--dims", "a,b"], "--dims takes comma-separated whole numbers"),
    (["traverse", "--range", "1,1"], "--range takes two different finite numbers"),
    (["traverse", "--steps", "1"], "--steps 1 is too small"),
    (["traverse", "--mode", "spiral"], "--mode spiral is not one of grid, rows, map"),
    (["traverse", "--mode", "map"], "--mode map needs a model with latent_size=2"),
    (["embed"], "pass --dims 0,1"),
    (["reconstruct", "--n", "0"], "--n 0 is too small"),
    (["sample", "--n", "0"], "--n 0 is too small"),
    (["embed", "--n", "0"], "--n 0 is too small"),
    (["reconstruct", "--n", "3", "--indices", "1,2"], "not both"),
    (["reconstruct", "--indices", "10000"], "index 10000 is beyond the test split's 10000 images"),
    (["interpolate", "--between", "0"], "--between takes 2 comma-separated"),
    (["traverse", "--around", "-1"], "index -1 is negative"),
    (["reconstruct", "--split", "valid"], "--split valid is not one of test, train"),
    (["sample", "--out", "picture.jpg"], "must end in .png"),
    (["sample", "--device", "tpu"], "--device tpu is not one of"),
    (["sample", "--scale", "0"], "--scale 0 is too small"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_OPTIONS, ids=[" ".join(case[0]) for case in BAD_OPTIONS])
def test_a_bad_option_is_one_line_and_exit_2(runner, trained_run, arguments, message):
    result = invoke(runner, *arguments, "-c", str(trained_run))
    assert_usage_error(result, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_a_missing_gpu_is_a_usage_error(runner, trained_run):
    assert_usage_error(invoke(runner, "sample", "-c", str(trained_run), "--device", "cuda"), "--device cuda asked for")


def test_an_unwritable_out_is_a_run_error(runner, trained_run, tmp_path):
    (tmp_path / "file").write_text("")
    result = invoke(runner, "sample", "-c", str(trained_run), "--out", str(tmp_path / "file" / "x.png"))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: cannot write") and len(result.stderr.strip().splitlines()) == 1


def test_data_root_overrides_the_checkpoints(runner, trained_run, data_root, tmp_path):
    payload = checkpoint.load(trained_run)
    payload["config"]["data"]["root"] = str(tmp_path / "moved")  # as if trained on another machine
    torch.save(payload, tmp_path / "moved.pt")
    arguments = ["--data-root", str(data_root), "-o", str(tmp_path / "r.png")]
    assert pixels(written(invoke(runner, "reconstruct", "-c", str(tmp_path / "moved.pt"), *arguments))).shape == (
        62,
        242,
    )
    assert not (tmp_path / "moved").exists()


def test_map_options_that_do_not_apply_are_refused(runner, latent2_run):
    result = invoke(runner, "traverse", "-c", str(latent2_run), "--mode", "map", "--range", "-2,2")
    assert_usage_error(result, "--mode map takes no --range")


def assert_usage_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output and not result.stdout


@torch.no_grad()
def decoded_means(model, x: torch.Tensor) -> torch.Tensor:
    """The decoder's pixel means at the posterior mean, computed here independently of the tool's code."""
    return model.decoder(model.encoder(x).mean).probs


def test_traverse_gif_animates_the_rows_one_frame_per_step(runner, trained_run, tmp_path):
    from PIL import Image

    out = tmp_path / "rows.gif"
    arguments = ["--mode", "rows", "--gif", "--steps", "7", "-o", str(out)]
    result = invoke(runner, "traverse", "-c", str(trained_run), *arguments)
    assert result.exit_code == 0, result.output
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 7 and gif.info["loop"] == 0
        frames = []
        for number in range(gif.n_frames):
            gif.seek(number)
            frames.append(gif.convert("L").tobytes())
    assert frames[0] != frames[-1]  # the dims move between the first and the last step
    for arguments, says in (
        (["--mode", "grid", "--gif"], "--gif animates --mode rows"),
        (["--mode", "rows", "--gif", "-o", str(tmp_path / "still.png")], "must end in .gif"),
    ):
        refused = invoke(runner, "traverse", "-c", str(trained_run), *arguments)
        assert refused.exit_code == 2 and says in refused.stderr
    assert not (tmp_path / "still.png").exists()
