"""The discretised logistic likelihood against independent computations, and the conv model's shapes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from vaecli.models.conv import ConvVAE, conv_sizes
from vaecli.models.likelihoods import (
    DiscretisedLogistic,
    is_log_likelihood,
    logit_gradient,
    nats_label,
    nll_rows,
    nll_sum,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def outputs(locs: list[float], log_scales: list[float]) -> torch.Tensor:
    """A decoder output row for sub-pixels with mean ``locs`` (in (0, 1)) and log-scales ``log_scales``."""
    loc = torch.tensor(locs, dtype=torch.float64)
    return torch.cat([torch.logit(loc), torch.tensor(log_scales, dtype=torch.float64)])[None]


CASES = outputs([0.5, 0.01, 0.99, 0.3, 0.7, 0.5], [-8.0, -3.0, -1.0, 0.0, 2.0, -5.5])


def masses(row: torch.Tensor) -> torch.Tensor:
    """P(k) for k = 0..255 of every sub-pixel of ``row``: (256, sub-pixels)."""
    pixels = row.shape[-1] // 2
    return torch.stack([DiscretisedLogistic(row).log_prob(level.expand(1, pixels))[0] for level in LEVELS]).exp()


def test_the_256_masses_of_each_sub_pixel_sum_to_one():
    total = masses(CASES).sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-9), total


def test_each_mass_is_the_logistic_cdf_difference_scipy_computes():
    loc = torch.sigmoid(CASES[0, :6]).numpy()
    scale = CASES[0, 6:].clamp(min=-8).exp().numpy()
    got = masses(CASES).numpy()
    edges = (torch.arange(257, dtype=torch.float64).numpy() - 0.5) / 255
    cdf = stats.logistic.cdf(edges[:, None], loc=loc, scale=scale)
    cdf[0], cdf[-1] = 0.0, 1.0  # the end bins take the tails
    expected = cdf[1:] - cdf[:-1]
    assert abs(got - expected).max() < 1e-12


def test_a_narrow_logistic_puts_its_mass_on_its_own_bin_without_underflow():
    row = outputs([100 / 255], [-8.0])
    log_mass = DiscretisedLogistic(row).log_prob(torch.tensor([[100 / 255]], dtype=torch.float64))
    far = DiscretisedLogistic(row).log_prob(torch.tensor([[120 / 255]], dtype=torch.float64))
    assert log_mass.item() == pytest.approx(0.0, abs=1e-2)  # the bin is 5.8 scales either side: 99.4%
    assert math.isfinite(far.item()) and far.item() < -40  # tiny, yet a finite log-probability


def test_mean_is_the_weighted_sum_of_the_256_values():
    expected = (masses(CASES) * LEVELS[:, None]).sum(0)
    assert torch.allclose(DiscretisedLogistic(CASES).mean[0], expected, atol=1e-9)


def test_samples_are_8_bit_values_with_the_right_frequencies():
    torch.manual_seed(0)
    row = outputs([0.4], [-3.0]).float()
    draws = DiscretisedLogistic(row).sample((20_000,))[:, 0, 0]
    assert torch.equal(draws * 255, torch.round(draws * 255))
    assert float(draws.mean()) == pytest.approx(float(DiscretisedLogistic(row).mean), abs=2e-3)


def test_loss_gradient_and_row_sums_agree_with_autograd_of_the_log_probability():
    torch.manual_seed(1)
    raw = torch.randn(4, 2 * 12, dtype=torch.float64)
    x = torch.randint(0, 256, (4, 12), dtype=torch.float64) / 255
    leaf = raw.clone().requires_grad_(True)
    (-DiscretisedLogistic(leaf).log_prob(x).sum()).backward()
    assert torch.allclose(logit_gradient(raw, x, "discretised_logistic", 0.5), 0.5 * leaf.grad)
    rows = nll_rows(raw, x, "discretised_logistic")
    assert torch.allclose(rows.sum(), nll_sum(raw, x, "discretised_logistic"))
    stacked = nll_sum(raw[None].expand(3, -1, -1), x, "discretised_logistic", stacked=True)
    assert torch.allclose(stacked, rows.sum().expand(3))


def test_its_nats_are_a_log_likelihood_of_8_bit_images():
    assert is_log_likelihood("discretised_logistic", binary_pixels=False)
    assert nats_label("discretised_logistic", False) == "log-likelihood"


@pytest.mark.parametrize(("side", "layers", "last"), [(64, 4, 4), (32, 3, 4), (28, 3, 3)])
def test_conv_layers_adapt_to_the_image_size(side: int, layers: int, last: int):
    sizes = conv_sizes(side, 4)
    assert len(sizes) - 1 == layers and sizes[-1] == last


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 64, 64), (3, 30, 30)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretised_logistic"])
def test_conv_model_gives_back_images_of_the_shape_it_takes(shape: tuple[int, int, int], likelihood: str):
    model = ConvVAE(6, shape, likelihood=likelihood)
    pixels = math.prod(shape)
    q, z, p = model(torch.rand(5, pixels))
    assert q.loc.shape == (5, 6) and z.shape == (5, 6)
    assert p.mean.shape == (5, pixels)
    assert p.logits.shape == (5, pixels * (2 if likelihood == "discretised_logistic" else 1))
    assert model.decoder(torch.randn(3, 5, 6)).mean.shape == (3, 5, pixels)  # draws x images x latent
