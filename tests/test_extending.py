"""Each extension point proved by a tiny extra registered inside the test: a model, a dataset, an
objective and a metric. The config group, the checkpoint, the picture commands and `vae evaluate`
know each one with no edit anywhere else (docs/extending.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import invoke
from vaecli.data.registry import DATASETS
from vaecli.data.tensors import Split
from vaecli.measure.registry import METRICS, Metric
from vaecli.models.mlp import VAE
from vaecli.models.registry import MODELS
from vaecli.objectives.beta import BetaElbo
from vaecli.objectives.registry import OBJECTIVES

PICTURES = (
    ("reconstruct", "--n", "4"),
    ("traverse",),
    ("traverse", "--mode", "rows"),
    ("traverse", "--mode", "map"),
    ("sample", "--n", "3"),
    ("interpolate",),
    ("embed", "--n", "64"),
)


@dataclass
class LinearConfig:
    """A model with no hidden layer: the encoder and decoder are one linear map each."""

    name: str = "linear"
    likelihood: str = "bernoulli"


def build_linear(cfg) -> VAE:
    return VAE(latent_size=int(cfg.latent_size), hidden_sizes=[], likelihood=str(cfg.model.likelihood))


class Stripes:
    """A dataset made here: 28 x 28 images of one bright row (its index is the label)."""

    def ensure(self, root, say=None):
        return root

    def split(self, root, train, limit=None, say=None) -> Split:
        count = 300 if train else 100
        rows = torch.arange(count) % 28
        images = torch.zeros(count, 28, 28)
        images[torch.arange(count), rows] = 1.0
        return Split(images.view(count, -1)[:limit], rows[:limit])

    def where(self, root) -> str:
        return "made in memory"


class HalfBeta(BetaElbo):
    """The beta-ELBO with half the KL weight."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.beta /= 2


@pytest.fixture
def registered():
    MODELS.register("linear", build_linear, schema=LinearConfig)
    DATASETS.register("stripes", Stripes(), schema={"name": "stripes"})
    OBJECTIVES.register("half_beta", HalfBeta, schema={"name": "half_beta"})
    METRICS.register("mean_scale", Metric(mean_scale, "latent units", "mean posterior standard deviation"))
    yield
    MODELS.unregister("linear")
    DATASETS.unregister("stripes")
    OBJECTIVES.unregister("half_beta")
    METRICS.unregister("mean_scale")


def mean_scale(model, images, generator) -> dict[str, float]:
    return {"mean": float(model.encoder(images).scale.mean())}


def train(runner, tiny, run_dir, *overrides):
    result = invoke(runner, "train", *tiny, *overrides, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir


def test_a_registered_model_trains_and_every_picture_command_opens_it(registered, runner, tiny, tmp_path):
    run_dir = train(runner, tiny, tmp_path / "run", "model=linear", "latent_size=2")  # 2: --mode map too
    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert weights["encoder.head.weight"].shape == (4, 784)  # no hidden layer: 784 -> 2 x latent_size
    for command in PICTURES:
        out = tmp_path / f"{'-'.join(command)}.png"
        result = invoke(runner, *command, "-c", str(run_dir), "--out", str(out))
        assert result.exit_code == 0, (command, result.output)
        assert out.stat().st_size > 0
    assert invoke(runner, "evaluate", "-c", str(run_dir), "--k", "2", "--n", "16").exit_code == 0


def test_an_unknown_model_lists_the_registered_ones(registered, runner, tiny, tmp_path):
    result = invoke(runner, "train", *tiny, "model=nothing", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2
    assert "linear" in result.stderr and "mlp" in result.stderr and not (tmp_path / "run").exists()


def test_a_registered_dataset_trains_and_its_images_come_back(registered, runner, tiny, tmp_path):
    run_dir = train(runner, tiny, tmp_path / "run", "data=stripes", "data.limit=null", "data.test_limit=null")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics.step.max() == 8 and metrics.neg_elbo_nats.notna().all()
    result = invoke(runner, "reconstruct", "-c", str(run_dir), "--n", "3", "--out", str(tmp_path / "r.png"))
    assert result.exit_code == 0, result.output
    assert invoke(runner, "data", "stripes").stdout.strip() == "stripes: made in memory"


def test_a_registered_objective_trains_with_its_own_loss(registered, runner, tiny, tmp_path):
    run_dir = train(runner, tiny, tmp_path / "run", "objective=half_beta", "beta=0.5")
    train_rows = pd.read_csv(run_dir / "metrics.csv").query("split == 'train'")
    expected = train_rows.reconstruction + 0.25 * train_rows.kl  # half of beta=0.5
    assert (train_rows.loss - expected).abs().max() < 1e-5
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").objective.name == "half_beta"


def test_a_registered_metric_is_reported_by_vae_evaluate(registered, runner, trained_run):
    result = invoke(runner, "evaluate", "-c", str(trained_run), "--k", "2", "--n", "32")
    assert result.exit_code == 0, result.output
    found = json.loads((trained_run / "evaluation.json").read_text())["metrics"]["mean_scale"]
    from vaecli.data.tensors import load_split
    from vaecli.runfolder.checkpoint import load_model

    loaded = load_model(trained_run, "cpu")
    images = load_split("mnist", loaded.config.data.root, train=False, limit=32).images
    with torch.no_grad():
        assert found["values"]["mean"] == pytest.approx(float(loaded.model.encoder(images).scale.mean()), rel=1e-6)
    assert found["unit"] == "latent units" and "mean_scale: mean (latent units)" in " ".join(result.stdout.split())
