import pytest
import torch

from vaecli.data.tensors import (
    Batches,
    DynamicBinarizer,
    Split,
    batch_binarizer,
    binarize_once,
    binarize_split,
    load_split,
    training_set,
)


@pytest.fixture(scope="module")
def grey(data_root) -> torch.Tensor:
    """Real grey-level MNIST test images: 18.6 % of their pixels lie strictly between 0 and 1."""
    return load_split("mnist", data_root, train=False, limit=500).images


def is_binary(images: torch.Tensor) -> bool:
    return bool(((images == 0) | (images == 1)).all())


def test_a_fixed_draw_is_binary_follows_the_grey_levels_and_ignores_the_global_seed(grey):
    torch.manual_seed(0)
    first = binarize_once(grey, seed=11)
    torch.manual_seed(1)
    again = binarize_once(grey, seed=11)
    assert is_binary(first) and torch.equal(first, again)
    assert not torch.equal(first, binarize_once(grey, seed=12))
    # an unbiased draw: on average as bright as the grey levels, exact where they are 0 or 1
    assert abs(float(first.mean() - grey.mean())) < 0.005
    assert torch.equal(first[grey == 0], grey[grey == 0]) and torch.equal(first[grey == 1], grey[grey == 1])
    # a limit that cuts the split keeps the same binary images
    assert torch.equal(binarize_once(grey[:37], seed=11), first[:37])


def test_static_gives_the_same_binary_train_and_test_images_in_every_run(grey):
    train_a = binarize_split(grey, "static", train=True)
    test_a = binarize_split(grey, "static", train=False)
    torch.manual_seed(123)  # another run seed changes nothing
    assert torch.equal(binarize_split(grey, "static", train=True), train_a)
    assert torch.equal(binarize_split(grey, "static", train=False), test_a)
    assert is_binary(train_a) and is_binary(test_a)
    assert not torch.equal(train_a, test_a)  # two splits, two independent draws


def test_dynamic_keeps_grey_training_images_and_the_same_binary_test_set_as_static(grey):
    train, test = Split(grey[:300], torch.zeros(300)), Split(grey[300:], torch.ones(200))
    assert torch.equal(training_set(train, test, "train", "dynamic").images, grey[:300])
    assert torch.equal(training_set(train, test, "all", "dynamic").images, grey)  # the test part is drawn too
    dynamic_test = binarize_split(grey, "dynamic", train=False)
    assert is_binary(dynamic_test)
    assert torch.equal(dynamic_test, binarize_split(grey, "static", train=False))
    assert torch.equal(binarize_split(grey, "none", train=False), grey)
    static_all = training_set(train, test, "all", "static")
    assert torch.equal(static_all.images[300:], binarize_split(grey[300:], "static", train=False))
    assert torch.equal(static_all.images[:300], binarize_split(grey[:300], "static", train=True))
    assert torch.equal(static_all.labels, torch.cat([train.labels, test.labels]))
    with pytest.raises(ValueError):
        binarize_split(grey, "sometimes", train=True)


def test_dynamic_draws_a_fresh_binary_batch_on_every_use(grey):
    binarizer = batch_binarizer("dynamic", seed=0)
    batches = Batches(
        grey, batch_size=50, shuffle=False, generator=torch.Generator().manual_seed(0), binarizer=binarizer
    )
    first_epoch = [batches.batch(step) for step in range(1, 11)]
    second_epoch = [batches.batch(step) for step in range(11, 21)]
    for a, b, source in zip(first_epoch, second_epoch, grey.split(50)):
        assert is_binary(a) and is_binary(b)
        assert not torch.equal(a, b)  # the same grey images, another draw
        certain = (source == 0) | (source == 1)
        assert torch.equal(a[certain], b[certain])
    assert batch_binarizer("none", seed=0) is None and batch_binarizer("static", seed=0) is None


def test_dynamic_draws_are_reproducible_and_leave_other_random_streams_alone(grey):
    torch.manual_seed(7)
    global_state = torch.get_rng_state()
    a, b = DynamicBinarizer(seed=3), DynamicBinarizer(seed=3)
    draws_a = [a(grey[:64]) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), global_state)  # model init and reparameterisation noise untouched
    assert all(torch.equal(x, y) for x, y in zip(draws_a, [b(grey[:64]) for _ in range(3)]))
    assert not torch.equal(DynamicBinarizer(seed=4)(grey[:64]), draws_a[0])
    # a resumed run continues the same stream from the saved state
    state = a.get_state()
    expected = a(grey[:64])
    resumed = DynamicBinarizer(seed=99)
    resumed.set_state(state)
    assert torch.equal(resumed(grey[:64]), expected)
