"""The config keys of issue 10 and the burda2016 preset: defaults keep the seed, bad values are one line."""

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from vaecli.config import schema as config
from vaecli.config.hydra_bridge import compose
from vaecli.data import tensors as data
from vaecli.errors import UsageError
from vaecli.models import likelihoods
from vaecli.models import mlp as model
from vaecli.models.mlp import VAE
from vaecli.run import schedules
from vaecli.run.schedules import lr_at, schedule_epochs, set_lr, staged_total_epochs


def test_new_keys_default_to_the_seed_experiment():
    cfg = compose([])
    assert (cfg.data.binarize, cfg.model.likelihood, cfg.model.activation) == ("none", "bernoulli", "relu")
    assert list(cfg.train.adam_betas) == [0.9, 0.999] and cfg.train.adam_eps == 1e-8  # torch's Adam defaults
    assert cfg.train.lr_schedule.name == "constant" and lr_at(123.0, 1e-3, cfg.train.lr_schedule) == 1e-3
    assert cfg.eval.iwae_k == 0


def test_burda2016_preset_is_their_vae_and_its_loss_is_the_plain_elbo():
    cfg = compose(["experiment=burda2016"])
    assert list(cfg.model.hidden_sizes) == [200, 200] and cfg.latent_size == 50
    assert (cfg.model.activation, cfg.data.binarize, cfg.train.batch_size) == ("tanh", "dynamic", 20)
    assert list(cfg.train.adam_betas) == [0.9, 0.999]
    # their eps 1e-4 is for a minibatch sum of per-image nats; ours is a batch mean of per-pixel nats
    assert math.isclose(cfg.train.adam_eps, 1e-4 / (784 * cfg.train.batch_size))
    # seed units: reconstruction / 784 + beta * KL / latent_size is (reconstruction + KL) / 784
    assert math.isclose(cfg.beta * 784 / cfg.latent_size, 1.0)
    assert cfg.train.epochs == schedule_epochs(cfg.train.lr_schedule) == 3280
    schedule = cfg.train.lr_schedule
    for i in range(8):
        start = sum(3**j for j in range(i))  # stage i covers epochs [start, start + 3^i)
        for epoch in (start, start + 3**i - 0.5):
            assert math.isclose(lr_at(epoch, cfg.train.lr, schedule), 1e-3 * 10 ** (-i / 7)), (i, epoch)
    assert math.isclose(lr_at(5000, cfg.train.lr, schedule), 1e-4)  # the last rate stays
    assert compose(["experiment=burda2016", "train.batch_size=100"]).train.batch_size == 100  # overrides still win


@pytest.mark.parametrize(
    "override",
    [
        "model.likelihood=gaussian",
        "model.activation=sigmoid",
        "data.binarize=sometimes",
        "train.adam_betas=[0.9]",
        "train.adam_betas=[0.9,1.0]",
        "train.adam_eps=0",
        "train.lr_schedule.name=cosine",
        "train.lr_schedule.decay=1.5",
        "train.lr_schedule.growth=0.5",
        "eval.iwae_k=-1",
        "eval.latents_per_pass=0",
        "eval.mi_batch=1",
    ],
)
def test_impossible_values_are_named_in_one_line(override):
    key = override.split("=")[0]
    with pytest.raises(UsageError, match=key.replace("[", r"\[")) as error:
        compose([override])
    assert "\n" not in str(error.value)


def test_the_schema_lists_the_same_choices_as_the_code():
    # config/schema.py keeps its own tuples so that it does not import torch; model=mlp's schema sits beside its code
    assert config.BINARIZE == data.BINARIZE
    assert compose(["model.likelihood=continuous_bernoulli"]).model.likelihood in likelihoods.LIKELIHOODS
    rules = {field.name: field.metadata["rule"] for field in dataclasses.fields(model.MlpConfig) if field.metadata}
    assert rules["likelihood"] == f"must be one of {', '.join(likelihoods.LIKELIHOODS)}"
    assert rules["activation"] == f"must be one of {', '.join(model.ACTIVATIONS)}"
    assert config.LR_SCHEDULES == schedules.LR_SCHEDULES


def test_staged_schedule_arithmetic_and_setting_the_rate():
    assert staged_total_epochs(8, 1.0, 3.0) == 3280
    assert staged_total_epochs(4, 0.5, 1.0) == 2.0
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    set_lr(optimizer, 2.5e-4)
    assert optimizer.param_groups[0]["lr"] == 2.5e-4


def test_tanh_models_keep_the_parameter_names_so_checkpoints_load_across_activations():
    relu, tanh = VAE(latent_size=3, hidden_sizes=[8]), VAE(latent_size=3, hidden_sizes=[8], activation="tanh")
    assert relu.state_dict().keys() == tanh.state_dict().keys()
    assert any(isinstance(layer, torch.nn.Tanh) for layer in tanh.encoder.body)
    tanh.load_state_dict(relu.state_dict())


def test_lr_changes_are_the_steps_where_lr_at_moves():
    cfg = compose(["train.lr_schedule.name=staged", "train.lr_schedule.first_epochs=0.3", "train.lr_schedule.stages=4"])
    per_epoch, steps = 7, 60
    changes = schedules.lr_changes(cfg.train, per_epoch, steps)
    lrs = [lr_at((step - 1) / per_epoch, cfg.train.lr, cfg.train.lr_schedule) for step in range(1, steps + 1)]
    moved = {step: lr for step, lr, before in zip(range(2, steps + 1), lrs[1:], lrs) if lr != before}
    assert changes == moved and len(changes) == 3
    assert schedules.lr_changes(compose([]).train, per_epoch, steps) == {}


def test_burda2016_short_is_the_same_model_on_a_20_minute_cpu_budget():
    short, full = compose(["experiment=burda2016_short"]), compose(["experiment=burda2016"])
    for key in ("model", "latent_size", "beta", "data", "train.adam_betas"):
        assert OmegaConf.select(short, key) == OmegaConf.select(full, key), key
    assert short.train.epochs == schedule_epochs(short.train.lr_schedule) < 400
    assert math.isclose(short.train.adam_eps, 1e-4 / (784 * short.train.batch_size))  # Burda's eps, our units
    assert short.eval.iwae_k == 1000 and short.train.eval_every == 0
    lrs = [lr_at(epoch, short.train.lr, short.train.lr_schedule) for epoch in range(int(short.train.epochs))]
    assert lrs == sorted(lrs, reverse=True) and math.isclose(lrs[-1], short.train.lr / 10)
