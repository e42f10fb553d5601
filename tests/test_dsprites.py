"""The dSprites factor grid rendered by vaecli: size, order, factor values, symmetries, the canvas; training on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import invoke
from vaecli.data.dsprites import DSPRITES, NAMES, RENDERED_MD5, SIZES, factor_values, md5_of, render_sprite_positions
from vaecli.data.packed import PackedImages


@pytest.fixture(scope="module")
def grid(data_root):
    """The whole grid, rendered once into the shared data root (about half a minute) and verified by its MD5."""
    return DSPRITES.grid(data_root)


def test_the_grid_has_every_combination_in_c_order(grid):
    assert grid.shape == (737_280, 512) and grid.dtype == np.uint8
    assert SIZES == (3, 6, 40, 32, 32) and NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert md5_of(np.asarray(grid)) == RENDERED_MD5
    shape, scale, orientation, x, y = factor_values()
    assert list(shape) == [1, 2, 3] and np.allclose(scale, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert orientation[0] == 0 and orientation[-1] == pytest.approx(2 * math.pi) and len(orientation) == 40
    assert x[0] == 0 and x[-1] == 1 and len(x) == len(y) == 32


def image(grid, *classes: int) -> torch.Tensor:
    row = np.ravel_multi_index(classes, SIZES)
    return PackedImages(np.asarray(grid[row : row + 1]), 4096)[:].view(64, 64)


def centroid(picture: torch.Tensor) -> tuple[float, float]:
    rows, columns = torch.nonzero(picture, as_tuple=True)
    return float(columns.float().mean()) + 0.5, float(rows.float().mean()) + 0.5


def test_posy_varies_fastest_and_moves_the_sprite_down(grid):
    top, below, right = image(grid, 0, 5, 0, 0, 0), image(grid, 0, 5, 0, 0, 31), image(grid, 0, 5, 0, 31, 0)
    assert centroid(top) == pytest.approx((10.5, 10.5))
    assert centroid(below) == pytest.approx((10.5, 53.5))
    assert centroid(right) == pytest.approx((53.5, 10.5))


def test_scale_grows_the_sprite_and_shapes_differ(grid):
    areas = [float(image(grid, 0, s, 0, 16, 16).sum()) for s in range(6)]
    assert areas == sorted(areas) and areas[-1] > 3 * areas[0]
    square, ellipse, heart = (image(grid, shape, 5, 0, 16, 16) for shape in range(3))
    assert not torch.equal(square, ellipse) and not torch.equal(ellipse, heart)


def test_orientation_0_and_2_pi_are_the_same_image_and_the_symmetries_hold(grid):
    for shape in range(3):
        assert torch.equal(image(grid, shape, 3, 0, 7, 20), image(grid, shape, 3, 39, 7, 20))
    # the ellipse turned by pi is the same set of pixel centres up to float rounding at its rim
    ellipse, turned = (
        render_sprite_positions("ellipse", 1.0, 0.3),
        render_sprite_positions("ellipse", 1.0, 0.3 + math.pi),
    )
    assert (ellipse ^ turned).sum() <= 0.01 * ellipse.sum()


def test_every_sprite_lies_inside_the_canvas(grid):
    for start in range(0, len(grid), 65_536):
        pictures = PackedImages(np.asarray(grid[start : start + 65_536]), 4096)[:].view(-1, 64, 64)
        assert pictures.flatten(1).sum(1).min() > 0  # no sprite drawn off the canvas
        border = pictures[:, 0].sum() + pictures[:, -1].sum() + pictures[:, :, 0].sum() + pictures[:, :, -1].sum()
        assert border == 0


def test_splits_are_disjoint_fixed_and_carry_the_factors(grid, data_root):
    test = DSPRITES.split(data_root, train=False, limit=None, options=None)
    assert len(test) == 7373 and test.factors.shape == (7373, 5)
    train = DSPRITES.split(data_root, train=True, limit=1000, options=None)
    assert isinstance(train.images, PackedImages) and train.images[:5].shape == (5, 4096)
    rows = np.ravel_multi_index(tuple(test.factors.numpy().T), SIZES)
    assert np.array_equal(rows, DSPRITES.test_rows(0.01))
    assert torch.equal(test.images[:3], PackedImages(np.asarray(grid[rows[:3]]), 4096)[:])


def test_disentanglement_on_data_without_factors_is_one_line(trained_run, runner):
    result = invoke(runner, "evaluate", "-c", str(trained_run), "--disentanglement")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data=dsprites" in lines[0] and "data=mnist" in lines[0]
    assert not (trained_run / "disentanglement.json").exists()


@pytest.mark.parametrize(
    ("setting", "says"), [("data.binarize=static", "already 0 or 1"), ("data.train_on=all", "holds out its own")]
)
def test_settings_that_do_not_apply_to_dsprites_are_refused(runner, tmp_path, data_root, setting, says):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", "data=dsprites", f"data.root={data_root}", setting, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and says in result.stderr and not run_dir.exists(), result.output
    assert len(result.stderr.strip().splitlines()) == 1


def write_deepmind_like(path, sizes=(1, 3, 2, 2, 4, 4), **changes) -> None:
    """A small .npz of DeepMind's structure: imgs, latents_classes, latents_values and a pickled metadata dict."""
    count = math.prod(sizes)
    classes = np.stack(np.unravel_index(np.arange(count), sizes), axis=1)
    images = np.zeros((count, 64, 64), dtype=np.uint8)
    for row, (_, shape, scale, _, x, y) in enumerate(classes):  # a block whose place and size follow the factors
        images[row, 8 + 10 * y : 14 + 10 * y + scale, 8 + 10 * x : 12 + 10 * x + shape] = 1
    metadata = {
        "latents_sizes": np.array(sizes),
        "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY"),
    }
    arrays = {"imgs": images, "latents_classes": classes, "latents_values": classes.astype(float), "metadata": metadata}
    arrays.update(changes)
    np.savez_compressed(path, **{name: value for name, value in arrays.items() if value is not None})


def test_a_deepmind_structured_file_is_read_and_trained_on(runner, tmp_path):
    write_deepmind_like(tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
    data = ["data=dsprites", "data.source=deepmind", f"data.root={tmp_path}", "data.test_fraction=0.1"]
    run_dir = tmp_path / "run"
    small = ["model.hidden_sizes=[16]", "train.steps=4", "train.batch_size=16", "train.progress=false"]
    result = invoke(runner, "train", *data, *small, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    assert DSPRITES.factor_sizes(tmp_path, {"source": "deepmind"}) == (3, 2, 2, 4, 4)
    split = DSPRITES.split(tmp_path, False, options=compose_data(tmp_path))
    assert len(split) == 19 and split.factors.shape == (19, 5)


def compose_data(root):
    from vaecli.config.hydra_bridge import compose

    return compose(["data=dsprites", "data.source=deepmind", f"data.root={root}", "data.test_fraction=0.1"]).data


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"latents_values": None}, "no 'latents_values' array"),
        ({"imgs": np.zeros((10, 64, 64), dtype=np.uint8)}, "imgs is (10, 64, 64)"),
        ({"latents_classes": np.zeros((192, 6), dtype=np.int64)}, "not in the grid's order"),
        ({"metadata": {"latents_sizes": np.array([3, 2, 2, 4, 4])}}, "are not dSprites' six latents"),
    ],
)
def test_an_npz_with_the_wrong_arrays_is_one_line(runner, tmp_path, changes, says):
    write_deepmind_like(tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz", **changes)
    run_dir = tmp_path / "run"
    data = ["data=dsprites", "data.source=deepmind", f"data.root={tmp_path}"]
    result = invoke(runner, "train", *data, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and says in result.stderr and not run_dir.exists(), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "dsprites").exists()


SMALL = ["model.hidden_sizes=[16]", "latent_size=4", "train.steps=4", "train.batch_size=16", "train.progress=false"]


@pytest.mark.slow
def test_a_dsprites_run_its_codes_its_metrics_and_a_sweep_with_their_columns(runner, tmp_path, data_root, grid):
    """End to end: train, `vae encode`, `vae evaluate --disentanglement`, a 2-member sweep with the columns."""
    import json

    import pandas as pd

    run_dir = tmp_path / "run"
    data = ["data=dsprites", f"data.root={data_root}"]
    assert invoke(runner, "train", *data, *SMALL, f"hydra.run.dir={run_dir}").exit_code == 0
    assert "log-likelihood" in (run_dir / "metrics.csv").read_text()  # binary pixels: a Bernoulli is a likelihood
    codes = run_dir / "codes.npz"
    assert invoke(runner, "encode", "-c", str(run_dir), "--n", "100", "--out", str(codes)).exit_code == 0
    with np.load(codes) as arrays:
        assert arrays["loc"].shape == (100, 4) and arrays["factors"].shape == (100, 5)
        assert list(arrays["factor_names"]) == list(NAMES)
    too_many = invoke(runner, "encode", "-c", str(run_dir), "--n", "99999", "--out", str(tmp_path / "x.npz"))
    assert too_many.exit_code == 2 and len(too_many.stderr.strip().splitlines()) == 1
    result = invoke(runner, "evaluate", "-c", str(run_dir), "--disentanglement", "--fast-dci")
    assert result.exit_code == 0, result.output
    found = json.loads((run_dir / "disentanglement.json").read_text())
    assert found["images_encoded"] == 737_280 and "rendered by vaecli" in found["data"]
    for name, key in (("mig", "mig"), ("dci", "disentanglement"), ("factor_vae_score", "factor_vae_score")):
        assert 0 <= found["metrics"][name][key] <= 1 and found["metrics"][name]["seconds"] >= 0
    assert found["metrics"]["dci"]["learner"].startswith(
        "GradientBoostingClassifier, 20 stages at learning rate 0.5 (fast DCI"
    )
    assert "DCI (fast) disentanglement" in result.stdout  # the fast learner named where its figures are printed
    sweep_dir = tmp_path / "sweep"
    swept = ["beta=0.01,0.1", "eval.disentanglement=true", "eval.fast_dci=true", f"hydra.sweep.dir={sweep_dir}"]
    result = invoke(runner, "sweep", *data, *SMALL, *swept)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 2 and table.mig.between(0, 1).all() and table.beta_vae_score.notna().all()
    assert table.dci_learner.str.contains("fast DCI").all()
    assert (sweep_dir / "disentanglement.png").stat().st_size > 0


def test_eval_disentanglement_on_mnist_is_refused_before_any_folder(runner, tiny, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(runner, "train", *tiny, "eval.disentanglement=true", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and "data=dsprites" in result.stderr and not run_dir.exists(), result.output


def test_the_dsprites_beta_study_is_five_betas_of_conv_members_measured_at_the_end():
    from vaecli.sweep.command import plan

    study = plan(["experiment=dsprites_beta"])
    betas = sorted(
        float(override.split("=")[1]) for member in study.members for override in member if "beta=" in override
    )
    assert study.total == 5 and betas == pytest.approx([b * 10 / 4096 for b in (1, 2, 4, 8, 16)])
    for cfg in study.configs:
        assert cfg.data.name == "dsprites" and cfg.model.name == "conv" and cfg.latent_size == 10
        assert cfg.eval.disentanglement and cfg.train.steps == 4000
    narrowed = plan(["experiment=dsprites_beta", "beta=0.01"])  # the command line still wins
    assert narrowed.total == 1
