"""Stacked training of a group of members: the padded latent, solo equivalence, failure isolation.

Every test trains for real on a small real MNIST slice (512 training, 256 test images, 8 steps
of 32), one thread; the solo loop (vaecli.run.loop.train_model) is the reference.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vaecli.config.hydra_bridge import compose
from vaecli.data.tensors import Batches, binarize_split, load_split
from vaecli.models.mlp import VAE
from vaecli.run import loop as solo
from vaecli.run.loop import make_optimizer
from vaecli.runfolder import checkpoint
from vaecli.runfolder.metrics import METRIC_COLUMNS
from vaecli.sweep.batched.streams import StackedBatches
from vaecli.sweep.batched.trainer import GroupSettings, Member, StackedTrainer

STEPS, BATCH, LIMIT, TEST_LIMIT = 8, 32, 512, 256
TERMS = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_split("mnist", data_root, train=True, limit=LIMIT).images
    test = load_split("mnist", data_root, train=False, limit=TEST_LIMIT).images
    return train, test


def trainer(images, members, steps=STEPS, **settings) -> StackedTrainer:
    train, test = images
    return StackedTrainer(list(members), GroupSettings(steps=steps, batch_size=BATCH, **settings), train, test)


def solo_run(data_root: Path, tmp_path: Path, member: Member, steps=STEPS, **more) -> solo.TrainResult:
    overrides = {
        "data": {"name": "mnist", "root": str(data_root), "limit": LIMIT, "test_limit": TEST_LIMIT},
        "train": {"steps": steps, "batch_size": BATCH, "progress": False},
        "seed": member.seed,
        "beta": member.beta,
        "latent_size": member.latent_size,
        "device": "cpu",
    }
    cfg = OmegaConf.merge(compose([]), overrides, more)
    out = tmp_path / f"solo-{member.seed}-{member.beta}-{member.latent_size}"
    out.mkdir()
    return solo.train_model(cfg, out, say=lambda message: None)


def assert_rows_close(stacked: list[dict], alone: list[dict], rel: float, abs: float = 1e-7) -> None:
    assert [(r["step"], r["split"], r["epoch"]) for r in stacked] == [
        (r["step"], r["split"], r["epoch"]) for r in alone
    ]
    for mine, theirs in zip(stacked, alone):
        for key in TERMS:
            assert mine[key] == pytest.approx(theirs[key], rel=rel, abs=abs), (mine["step"], mine["split"], key)


def assert_terms_equal(stacked: list[dict], other: list[dict]) -> None:
    assert [{k: r[k] for k in ("step", "split", *TERMS)} for r in stacked] == [
        {k: r[k] for k in ("step", "split", *TERMS)} for r in other
    ]


def test_group_of_one_reproduces_the_solo_loop(images, data_root, tmp_path):
    member = Member(seed=3, beta=0.01, latent_size=10)
    group = trainer(images, [member])
    streamed, progress = [], []
    [result] = group.run(on_row=lambda i, row: streamed.append((i, row)), on_progress=lambda *a: progress.append(a))
    alone = solo_run(data_root, tmp_path, member)
    assert result.status == "ok" and streamed == [(0, row) for row in result.rows]
    loop_columns = [c for c in METRIC_COLUMNS if c not in ("held_out", "nats_are")]  # the writer adds those
    assert all(list(row) == loop_columns for row in result.rows)
    assert [p[0] for p in progress] == list(range(1, STEPS + 1)) and set(progress[-1][2]) == {0}
    assert_rows_close(result.rows, alone.rows, rel=1e-5)
    for name, value in alone.model.state_dict().items():
        torch.testing.assert_close(group.member_state_dict(0)[name], value, rtol=0, atol=1e-5)
    solo_checkpoint = checkpoint.load(tmp_path / f"solo-{member.seed}-{member.beta}-{member.latent_size}")
    assert torch.equal(group.member_shuffle_state(0), solo_checkpoint["rng"]["shuffle"])
    # the plain Adam state loads into the solo optimizer and matches it
    model = VAE(10)
    model.load_state_dict(group.member_state_dict(0))
    optimizer = make_optimizer(model, 1e-3, torch.device("cpu"))
    optimizer.load_state_dict(group.member_optimizer_state_dict(0))
    mine, theirs = optimizer.state_dict()["state"], alone.optimizer.state_dict()["state"]
    assert mine.keys() == theirs.keys() and len(mine) == 12
    for number, state in theirs.items():
        assert float(mine[number]["step"]) == float(state["step"]) == STEPS
        torch.testing.assert_close(mine[number]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-3, atol=1e-9)


def test_each_member_of_a_mixed_group_reproduces_its_solo_run(images, data_root, tmp_path):
    members = [Member(0, 0.01, 10), Member(1, 1.0, 2), Member(0, 0.0, 5)]
    results = trainer(images, members).run()
    for member, result in zip(members, results):
        assert_rows_close(result.rows, solo_run(data_root, tmp_path, member).rows, rel=1e-5)


# issue 10's settings, as a group shares them: (solo config, stacked GroupSettings)
LATER_SETTINGS = {
    "dynamic-tanh-staged": (
        {
            "data": {"binarize": "dynamic"},
            "model": {"activation": "tanh"},
            "train": {
                "adam_betas": [0.8, 0.99],
                "adam_eps": 1e-6,
                "lr_schedule": {"name": "staged", "stages": 2, "first_epochs": 0.25, "growth": 1, "decay": 0.5},
            },
        },
        {"binarize": "dynamic", "activation": "tanh", "betas": (0.8, 0.99), "eps": 1e-6, "lr_changes": ((5, 5e-4),)},
    ),
    "continuous-bernoulli": (
        {"model": {"likelihood": "continuous_bernoulli"}},
        {"likelihood": "continuous_bernoulli"},
    ),
}


@pytest.mark.parametrize("name", list(LATER_SETTINGS))
def test_binarisation_likelihood_activation_and_schedules_train_as_alone(images, data_root, tmp_path, name):
    """Each member of a group under issue 10's settings reproduces its solo run (rows and weights)."""
    config, settings = LATER_SETTINGS[name]
    train, test = images
    test = binarize_split(test, config.get("data", {}).get("binarize", "none"), train=False)
    members = [Member(0, 0.01, 10), Member(1, 1.0, 2)]
    group = StackedTrainer(members, GroupSettings(steps=STEPS, batch_size=BATCH, **settings), train, test)
    results = group.run()
    for number, (member, result) in enumerate(zip(members, results)):
        alone = solo_run(data_root, tmp_path, member, **config)
        # a continuous Bernoulli's nats are small differences of sums of ~1e4 nats: float32 rounding of those
        assert_rows_close(result.rows, alone.rows, rel=1e-5, abs=1e-3)
        for key, value in alone.model.state_dict().items():
            torch.testing.assert_close(group.member_state_dict(number)[key], value, rtol=0, atol=1e-5)
        if "binarize" in settings:
            saved = checkpoint.load(tmp_path / f"solo-{member.seed}-{member.beta}-{member.latent_size}")
            assert torch.equal(group.member_binarize_state(number)["binarize"], saved["rng"]["binarize"])
    assert group.optimizer.param_groups[0]["lr"] == dict(settings.get("lr_changes", ())).get(5, 1e-3)


def test_padded_latent_dimensions_are_dead(images):
    small, large = Member(0, 0.1, 2), Member(1, 0.1, 10)
    group = trainer(images, [small, large])
    pad = slice(2, 10)
    loc, scale = group.model.encode(images[0][:BATCH])
    assert torch.all(loc[0, :, pad] == 0) and torch.all(scale[0, :, pad] > 0)
    group.train_step(1)
    head, first = group.model.encoder_head, group.model.decoder_body[0]  # weights stacked (G, in, out)
    padded_outputs = [*range(2, 10), *range(12, 20)]  # loc and raw-scale outputs of the padded dims
    assert torch.all(head.weight.grad[0, :, padded_outputs] == 0) and torch.all(
        head.bias.grad[0, 0, padded_outputs] == 0
    )
    assert torch.all(first.weight.grad[0, pad] == 0)
    assert head.weight.grad[0, :, :2].abs().sum() > 0 and first.weight.grad[0, :2].abs().sum() > 0
    assert head.weight.grad[1, :, padded_outputs].abs().sum() > 0  # the unpadded member's own dims do learn
    results = group.run()  # steps 2.. (step 1 was taken above)
    assert torch.all(head.weight[0, :, padded_outputs] == 0) and torch.all(first.weight[0, pad] == 0)

    # no KL, no decoder input from the padding: the member trains exactly as in a group of its own size
    alone = trainer(images, [small]).run()[0]
    assert_rows_close(results[0].rows, [row for row in alone.rows if row["step"] > 1], rel=1e-6)
    assert all(0 < row["kl_nats"] < 2 * 10 for row in results[0].rows)
    state = group.member_state_dict(0)
    plain = VAE(latent_size=2)
    plain.load_state_dict(state)  # strict: exactly a plain latent_size=2 model
    assert state["encoder.head.weight"].shape == (4, 100) and state["decoder.body.0.weight"].shape == (100, 2)


def test_a_diverging_member_fails_alone_and_the_others_carry_on(images):
    members = [Member(0, 0.01, 10), Member(1, 0.1, 5), Member(2, 1.0, 10)]
    group = trainer(images, members)
    with torch.no_grad():
        group.model.decoder_head.weight[1, 7, 3] = float("nan")  # poison member 1 only
    failures: list[tuple[int, int, str]] = []
    results = group.run(on_failure=lambda i, failure: failures.append((i, failure.step, failure.message)))
    solo_words = (
        "training diverged before the first update (the forward pass of step 1 gave NaN or inf)"  # DivergenceWatch
    )
    assert failures == [(1, 1, f"{solo_words}: the weights became NaN, inf or too large; try a smaller train.lr")]
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].rows == [] and group.running == [0, 2]
    assert math.isnan(float(group.member_state_dict(1)["decoder.head.weight"][3, 7]))

    healthy = trainer(images, [members[0], members[2]]).run()
    assert_terms_equal(results[0].rows, healthy[0].rows)
    assert_terms_equal(results[2].rows, healthy[1].rows)
    assert results[0].rows[-1]["step"] == results[2].rows[-1]["step"] == STEPS


def test_a_group_whose_members_all_diverge_stops(images):
    group = trainer(images, [Member(0, 0.01, 10), Member(1, 0.01, 2)], steps=64, lr=1e6)
    results = group.run()
    assert [r.status for r in results] == ["failed", "failed"]
    assert group.running == [] and group.step < 64
    assert all("training diverged at the update of step" in r.failure.message for r in results)


def test_member_batches_follow_their_solo_order_across_epochs(images):
    train, _ = images
    seeds = [0, 1, 0, 2]
    stacked = StackedBatches(train, BATCH, shuffle=True, seeds=seeds)
    solo_batches = {seed: Batches(train, BATCH, True, torch.Generator().manual_seed(seed)) for seed in set(seeds)}
    per_epoch = LIMIT // BATCH
    for step in range(1, 2 * per_epoch + 3):
        if step == per_epoch + 1:
            stacked.select([1, 0])  # members 0 and 2 of seeds 0, 2 dropped: seed 0 (member 2) and 1 remain
            seeds = [1, 0]
        batch = stacked.batch(step)
        expected = {seed: solo_batches[seed].batch(step) for seed in set(seeds)}  # once per step: draws at epochs
        assert batch.shape == (len(seeds), BATCH, 784)
        for slot, seed in enumerate(seeds):
            assert torch.equal(batch[slot], expected[seed])
    assert torch.equal(stacked.shuffle_state(0), solo_batches[0].generator.get_state())

    shared = StackedBatches(train, BATCH, shuffle=True, seeds=[5, 5])
    assert torch.equal(shared.batch(1), Batches(train, BATCH, True, torch.Generator().manual_seed(5)).batch(1))
    assert StackedBatches(train, BATCH, shuffle=False, seeds=[0, 1]).batch(2).shape == (BATCH, 784)


@pytest.mark.parametrize("hidden_sizes", [(), (32,)])
def test_other_depths_stack_and_unstack(images, hidden_sizes):
    members = [Member(0, 0.1, 2), Member(1, 0.1, 5)]
    group = trainer(images, members, steps=4, hidden_sizes=hidden_sizes)
    results = group.run()
    for i, member in enumerate(members):
        plain = VAE(member.latent_size, hidden_sizes)
        plain.load_state_dict(group.member_state_dict(i))
        alone = trainer(images, [member], steps=4, hidden_sizes=hidden_sizes).run()[0]
        assert_rows_close(results[i].rows, alone.rows, rel=1e-6)


def test_non_finite_weights_are_found_per_member(images):
    group = trainer(images, [Member(0, 0.1, 2), Member(1, 0.1, 5), Member(2, 0.1, 5)])
    assert group._finite_weights() == [True, True, True]
    with torch.no_grad():
        group.model.encoder_body[1].bias[2, 0, 5] = float("inf")
    assert group._finite_weights() == [True, True, False]


def test_a_member_does_not_depend_on_who_else_is_in_its_group(images):
    member = Member(0, 0.01, 10)
    with_one = trainer(images, [member, Member(1, 1.0, 2)])
    with_three = trainer(images, [Member(5, 0.0, 5), member, Member(0, 0.1, 10), Member(2, 0.5, 3)])
    first, second = with_one.run()[0], with_three.run()[1]
    assert_terms_equal(first.rows, second.rows)
    for name, value in with_one.member_state_dict(0).items():
        assert torch.equal(value, with_three.member_state_dict(1)[name]), name


def checkpoint_of(group: StackedTrainer, i: int) -> dict:
    """Member i as GroupRun saves it (the solo loop's checkpoint format), through torch.save and a weights-only load."""
    payload = {
        "step": group.step,
        "model": group.member_state_dict(i),
        "optimizer": group.member_optimizer_state_dict(i),
        "rng": {
            "torch": group.member_noise_state(i),
            "shuffle": group.member_shuffle_state(i),
            **group.member_binarize_state(i),
        },
        "training": group.member_training_state(i),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "settings",
    [{}, {"binarize": "dynamic", "lr_changes": ((18, 5e-4), (22, 2.5e-4)), "likelihood": "continuous_bernoulli"}],
    ids=["seed-settings", "dynamic-staged-cb"],
)
def test_a_stopped_group_put_back_from_its_checkpoints_ends_as_if_never_stopped(images, settings):
    """Stopped mid-epoch (its batch order matters), padded (latent 2 in 5), two members sharing a seed;
    also with per-batch binary draws and an lr stage that starts before and one after the stop."""
    members, steps = [Member(0, 0.1, 2), Member(1, 0.5, 5), Member(0, 0.0, 5)], 24  # 16 steps an epoch
    whole = trainer(images, members, steps=steps, **settings)
    uninterrupted = whole.run()
    first = trainer(images, members, steps=steps, **settings)
    first.run(stop=lambda: first.step == 19)
    saved = [checkpoint_of(first, i) for i in range(len(members))]
    assert first.step == 19 and saved[0]["training"]["order"] is not None
    assert ("binarize" in saved[0]["rng"]) == ("binarize" in settings)

    second = trainer(images, members, steps=steps, **settings)
    for i, payload in enumerate(saved):
        second.restore(i, payload, first.results[i].rows)
    streamed: list[dict] = []
    resumed = second.run(on_row=lambda i, row: streamed.append(row))
    assert min(row["step"] for row in streamed) == 24  # only what came after step 19 was trained again
    for i in range(len(members)):
        assert_terms_equal(resumed[i].rows, uninterrupted[i].rows)
        for name, value in whole.member_state_dict(i).items():
            assert torch.equal(second.member_state_dict(i)[name], value), (i, name)
        mine, theirs = second.member_optimizer_state_dict(i)["state"], whole.member_optimizer_state_dict(i)["state"]
        assert all(torch.equal(mine[n][key], theirs[n][key]) for n in theirs for key in theirs[n]), i
        assert torch.equal(second.member_noise_state(i), whole.member_noise_state(i))
    padded = second.model.encoder_head.weight[0]  # member 0's head, (hidden, 2 * 5): only latent dims 0, 1 used
    assert not padded[:, 2:5].any() and not padded[:, 7:10].any()


def test_a_group_continues_only_when_every_member_is_put_back(images):
    members = [Member(0, 0.1, 2), Member(1, 0.5, 5)]
    first = trainer(images, members)
    first.run(stop=lambda: first.step == 3)
    second = trainer(images, members)
    second.restore(0, checkpoint_of(first, 0), first.results[0].rows)
    with pytest.raises(ValueError, match=r"members \[1\] were not restored to step 3"):
        second.run()
