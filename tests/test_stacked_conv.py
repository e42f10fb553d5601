"""model=conv members stacked as grouped convolutions: each reproduces its solo run, any latent size.

Real training on a small real MNIST slice (512 training, 256 test images, 8 steps of 32), one
thread; the solo loop (vaecli.run.loop.train_model) with model=conv is the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.test_stacked import BATCH, LIMIT, STEPS, TERMS, TEST_LIMIT, one_thread  # noqa: F401 (one_thread: autouse)
from vaecli.config.hydra_bridge import compose
from vaecli.data.tensors import load_split
from vaecli.models.conv import ConvVAE
from vaecli.run import loop as solo
from vaecli.sweep.batched.groups import settings_of, stackable
from vaecli.sweep.batched.trainer import Member, StackedTrainer
from vaecli.sweep.batched.vmapped import GroupedConvStack, VmappedStack


def config(data_root: Path, member: Member, likelihood: str):
    overrides = {
        "data": {"root": str(data_root), "limit": LIMIT, "test_limit": TEST_LIMIT},
        "train": {"steps": STEPS, "batch_size": BATCH, "progress": False},
        "model": {"channels": [8, 8, 8], "hidden_sizes": [32], "likelihood": likelihood},
        "seed": member.seed,
        "beta": member.beta,
        "latent_size": member.latent_size,
        "device": "cpu",
    }
    return OmegaConf.merge(compose(["model=conv"]), overrides)


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretised_logistic"])
def test_each_conv_member_of_a_group_reproduces_its_solo_run(data_root, tmp_path, likelihood):
    members = [Member(0, 0.01, 6), Member(1, 0.5, 3), Member(0, 0.0, 6)]
    cfgs = [config(data_root, member, likelihood) for member in members]
    assert not any(stackable(cfg) for cfg in cfgs)  # on a CPU the launcher runs them one by one; a GPU stacks
    train = load_split("mnist", data_root, train=True, limit=LIMIT).images
    test = load_split("mnist", data_root, train=False, limit=TEST_LIMIT).images
    group = StackedTrainer(members, settings_of(cfgs[0], len(train)), train, test)
    assert isinstance(group.model, GroupedConvStack)
    results = group.run()
    for number, (cfg, result) in enumerate(zip(cfgs, results)):
        out = tmp_path / f"solo{number}"
        out.mkdir()
        alone = solo.train_model(cfg, out, say=lambda message: None)
        assert [(r["step"], r["split"]) for r in result.rows] == [(r["step"], r["split"]) for r in alone.rows]
        for mine, theirs in zip(result.rows, alone.rows):
            for key in TERMS:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (mine["step"], key)
        state = group.member_state_dict(number)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-4)
        assert isinstance(group.model.member_model(number), ConvVAE)


def test_vmap_and_grouped_convolutions_compute_the_same_model():
    torch.manual_seed(0)
    build = lambda latent: ConvVAE(latent, (3, 32, 32), channels=[8, 8, 8], hidden_sizes=[16])  # noqa: E731
    models = [build(latent) for latent in (2, 5)]
    x = torch.rand(4, 3 * 32 * 32)
    by_hand, by_vmap = GroupedConvStack(models, build), VmappedStack(models, build)
    for got, expected in zip(by_hand.encode(x), by_vmap.encode(x)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    z = torch.randn(2, 4, 5)
    torch.testing.assert_close(by_hand.decode(z), by_vmap.decode(z), rtol=1e-5, atol=1e-6)
    kept = by_hand.select([1])
    torch.testing.assert_close(kept.decode(z[1:]), by_hand.decode(z)[1:], rtol=1e-5, atol=1e-6)
