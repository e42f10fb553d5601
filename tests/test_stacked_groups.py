"""Which members train together: the grouping rules of stacked sweeps, on composed configs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from vaecli.config.hydra_bridge import compose
from vaecli.sweep.batched.groups import group_key, member_of, plan_groups, settings_of
from vaecli.sweep.batched.trainer import GroupSettings, Member


def config(**dotted):
    cfg = OmegaConf.merge(compose([]), {"data": {"name": "mnist", "root": "/data"}})
    for key, value in dotted.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def test_beta_seed_and_latent_size_share_a_group_and_ignored_keys_do_not_split():
    cfgs = [
        config(beta=0.0, latent_size=2),
        config(beta=1.0, latent_size=20, seed=7),
        config(threads=1, train__progress=False),
    ]
    assert plan_groups(cfgs, max_group=16) == [[0, 1, 2]]


@pytest.mark.parametrize(
    "key, value",
    [
        ("train__lr", 0.01),
        ("train__batch_size", 32),
        ("train__steps", 10),
        ("train__epochs", 1.0),
        ("train__shuffle", False),
        ("train__eval_every", 0),
        ("model__hidden_sizes", [50]),
        ("model__min_scale", 0.01),
        ("data__name", "fashion_mnist"),
        ("data__limit", 100),
        ("data__train_on", "all"),
        ("device", "cuda"),
        ("data__binarize", "dynamic"),
        ("model__likelihood", "continuous_bernoulli"),
        ("model__activation", "tanh"),
        ("train__adam_eps", 1e-4),
        ("train__lr_schedule__name", "staged"),
    ],
)
def test_any_other_difference_splits_the_group(key, value):
    cfgs = [config(beta=0.1), config(beta=0.2), config(**{key: value}), config(seed=3)]
    assert plan_groups(cfgs, max_group=16) == [[0, 1, 3], [2]]
    assert group_key(cfgs[0]) != group_key(cfgs[2])


def test_large_groups_split_into_near_equal_parts():
    cfgs = [config(seed=k) for k in range(17)]
    assert [len(group) for group in plan_groups(cfgs, max_group=16)] == [9, 8]
    assert plan_groups(cfgs[:5], max_group=2) == [[0, 1], [2, 3], [4]]
    assert plan_groups(cfgs[:3], max_group=1) == [[0], [1], [2]]
    with pytest.raises(ValueError):
        plan_groups(cfgs, max_group=0)


def test_only_members_continuing_from_the_same_step_share_a_group():
    cfgs = [config(seed=k) for k in range(5)]
    assert plan_groups(cfgs, max_group=16, starts=[0, 300, 0, 300, 500]) == [[0, 2], [1, 3], [4]]


def test_member_and_settings_read_the_config():
    cfg = config(beta=0.5, seed=4, latent_size=3, train__epochs=2.0, train__batch_size=100, model__hidden_sizes=[64])
    assert member_of(cfg) == Member(seed=4, beta=0.5, latent_size=3)
    settings = settings_of(cfg, examples=1000)
    assert settings == GroupSettings(steps=20, batch_size=100, lr=1e-3, hidden_sizes=(64,), shuffle=True)


def test_settings_carry_adam_the_lr_schedule_likelihood_and_binarisation():
    cfg = config(
        train__epochs=2.0,
        train__batch_size=100,
        train__adam_eps=1e-6,
        train__lr_schedule__name="staged",
        train__lr_schedule__stages=2,
        train__lr_schedule__first_epochs=1,
        train__lr_schedule__decay=0.5,
        model__likelihood="continuous_bernoulli",
        model__activation="tanh",
        data__binarize="dynamic",
    )
    settings = settings_of(cfg, examples=1000)
    assert (settings.eps, settings.betas, settings.lr_changes) == (1e-6, (0.9, 0.999), ((11, 5e-4),))
    assert (settings.likelihood, settings.activation, settings.binarize) == ("continuous_bernoulli", "tanh", "dynamic")
