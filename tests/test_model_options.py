"""model.init, model.scale and model.output_bias: Burda et al.'s code's choices, each by its definition."""

from __future__ import annotations

import math

import numpy as np
import torch

from vaecli.config.hydra_bridge import compose
from vaecli.models.mlp import VAE
from vaecli.run.loop import Loop
from vaecli.run.resume import config_hash


def test_glorot_draws_are_uniform_within_the_bound():
    torch.manual_seed(0)
    model = VAE(latent_size=50, hidden_sizes=[200, 200], init="glorot")
    first = model.encoder.body[0]
    bound = math.sqrt(6 / (784 + 200))
    weights = first.weight.detach().numpy()
    assert weights.min() >= -bound and weights.max() <= bound and weights.max() > 0.99 * bound
    assert abs(weights.var() - bound**2 / 3) < 0.02 * bound**2 / 3  # the variance of U(-b, b)
    assert not first.bias.detach().any()


def test_exp_scale_is_exp_of_the_raw_output_plus_the_floor():
    torch.manual_seed(0)
    model = VAE(latent_size=3, hidden_sizes=[8], scale="exp", min_scale=1e-4)
    x = torch.rand(5, 784)
    raw = model.encoder.head(model.encoder.body(x)).chunk(2, dim=-1)[1]
    torch.testing.assert_close(model.encoder(x).scale, raw.exp() + 1e-4)


def test_a_new_run_starts_its_output_bias_at_the_mean_training_pixel(tmp_path, tiny):
    cfg = compose([*tiny, "model.output_bias=data_mean"])
    loop = Loop(cfg, tmp_path, lambda message: None, None)
    mean = np.clip(loop.images.numpy().astype(np.float64).mean(0), 0.001, 0.999)
    expected = np.log(mean / (1 - mean))  # the logit, computed apart from torch
    np.testing.assert_allclose(loop.model.decoder.head.bias.detach().numpy(), expected, rtol=1e-5, atol=1e-4)


def test_the_new_keys_at_their_defaults_leave_a_runs_hash_as_it_was():
    """A run made before these keys existed (its config lacks them) keeps its hash: sweeps skip it."""
    from omegaconf import OmegaConf

    cfg = compose([])
    older = OmegaConf.to_container(cfg, resolve=True)
    for key in ("init", "scale", "output_bias"):
        older["model"].pop(key)
    assert config_hash(older) == config_hash(cfg)
    assert config_hash(compose(["model.scale=exp"])) != config_hash(cfg)
