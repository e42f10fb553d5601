import math

import pytest
import torch
from torch import distributions
from torch.nn import functional as F

from vaecli.data.tensors import load_split
from vaecli.models.likelihoods import (
    ContinuousBernoulli,
    cb_log_normalizer,
    cb_mean,
    is_log_likelihood,
    nats_label,
    nll_sum,
    pixel_distribution,
)
from vaecli.models.mlp import VAE
from vaecli.objectives.beta import backward_beta_elbo, elbo_terms, kl_to_standard_normal

# both sides of the series/closed-form switches (|l| = 0.2), tiny, moderate and saturated logits
LOGITS = [-60.0, -30.0, -8.0, -1.0, -0.21, -0.19, -1e-3, 0.0, 1e-6, 0.05, 0.199, 0.201, 0.5, 3.0, 16.0, 40.0]


def integrate_unit_interval(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(values, grid, dim=-1)


def numerical_cb(logits: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """log C and the mean by quadrature of the unnormalised density exp(x l - softplus(l)) on [0, 1]."""
    column = torch.tensor(logits, dtype=torch.float64).unsqueeze(1)
    grid = torch.linspace(0.0, 1.0, 400_001, dtype=torch.float64)
    # shifted by max(0, l) so exp never overflows; the shift cancels in log C and in the mean
    shift = column.clamp_min(0.0)
    unnormalised = torch.exp(grid * column - shift)
    mass = integrate_unit_interval(unnormalised, grid)
    log_c = -(mass.log() + shift.squeeze(1) - F.softplus(column.squeeze(1)))
    mean = integrate_unit_interval(grid * unnormalised, grid) / mass
    return log_c, mean


def test_log_normalizer_matches_numerical_integration_for_every_logit():
    expected, _ = numerical_cb(LOGITS)
    got = cb_log_normalizer(torch.tensor(LOGITS))
    assert torch.allclose(got.double(), expected, atol=2e-6, rtol=1e-6), (got, expected)
    assert math.isclose(float(got[LOGITS.index(0.0)]), math.log(2.0), rel_tol=1e-7)


def test_mean_matches_numerical_integration_and_torch_where_torch_is_accurate():
    _, expected = numerical_cb(LOGITS)
    got = cb_mean(torch.tensor(LOGITS))
    assert torch.allclose(got.double(), expected, atol=2e-6), (got, expected)
    moderate = torch.tensor([-8.0, -1.0, -0.3, 0.3, 1.0, 8.0])  # torch clamps probabilities beyond |l| ~ 16
    torch_mean = distributions.ContinuousBernoulli(logits=moderate).mean
    assert torch.allclose(cb_mean(moderate), torch_mean, atol=1e-5)


def test_density_is_normalised_and_agrees_with_torch_where_torch_is_accurate():
    logits = torch.tensor([-40.0, -5.0, -0.1, 0.0, 0.7, 12.0, 35.0], dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, 400_001, dtype=torch.float64)
    density = ContinuousBernoulli(logits=logits.unsqueeze(1)).log_prob(grid).exp()
    assert torch.allclose(integrate_unit_interval(density, grid), torch.ones(len(logits), dtype=torch.float64))
    x = torch.rand(50, 7, dtype=torch.float64)
    moderate = torch.tensor([-8.0, -2.0, -0.4, 0.0, 0.4, 2.0, 8.0], dtype=torch.float64)
    ours = ContinuousBernoulli(logits=moderate).log_prob(x)
    theirs = distributions.ContinuousBernoulli(logits=moderate).log_prob(x)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_analytic_normaliser_gradient_is_autograd_of_the_normaliser():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    (autograd,) = torch.autograd.grad(cb_log_normalizer(logits).sum(), logits)
    # d/dl [softplus(l) - log C(l)] = mean: the exponential-family identity the fast backward uses
    analytic = torch.sigmoid(logits.detach()) - cb_mean(logits.detach())
    assert torch.allclose(autograd, analytic, atol=1e-9)
    assert torch.autograd.gradcheck(
        cb_log_normalizer, (torch.linspace(-3, 3, 41, dtype=torch.float64).requires_grad_(),)
    )


def test_fast_backward_gives_the_autograd_gradient_for_the_continuous_bernoulli():
    torch.manual_seed(2)
    model, x = VAE(latent_size=4, hidden_sizes=[32], likelihood="continuous_bernoulli"), torch.rand(16, 784)

    def gradients(fast: bool, likelihood: str = "continuous_bernoulli") -> list[torch.Tensor]:
        torch.manual_seed(3)
        model.zero_grad(set_to_none=True)
        q, _, p = model(x)
        if fast:
            backward_beta_elbo(q, p.logits, x, beta=0.3, likelihood=likelihood)
        else:
            elbo_terms(q, p.logits, x, beta=0.3, likelihood=likelihood).loss.backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    continuous = gradients(True)
    for fast, slow in zip(continuous, gradients(False)):
        assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-4)
    # and the normaliser really is in there: the Bernoulli gradient differs
    assert any(not torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(continuous, gradients(True, "bernoulli")))


def test_decoder_distribution_and_nll_agree_for_both_likelihoods():
    torch.manual_seed(4)
    x = torch.rand(8, 784)
    for likelihood in ("bernoulli", "continuous_bernoulli"):
        model = VAE(latent_size=3, hidden_sizes=[16], likelihood=likelihood)
        p = model.decoder(torch.randn(8, 3))
        expected_type = ContinuousBernoulli if likelihood == "continuous_bernoulli" else distributions.Bernoulli
        assert type(p) is expected_type
        assert torch.allclose(-p.log_prob(x).sum(), nll_sum(p.logits, x, likelihood), rtol=1e-5)
    with pytest.raises(ValueError):
        VAE(likelihood="gaussian")
    with pytest.raises(ValueError):
        pixel_distribution(torch.zeros(3), "gaussian")


def test_training_with_the_continuous_bernoulli_lowers_its_negative_log_likelihood(data_root):
    torch.manual_seed(5)
    torch.set_num_threads(1)
    images = load_split("mnist", data_root, train=False, limit=256).images
    model = VAE(latent_size=4, hidden_sizes=[64], likelihood="continuous_bernoulli")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def neg_elbo() -> float:
        with torch.no_grad():
            q = model.encoder(images)
            return float(nll_sum(model.decoder(q.loc).logits, images, "continuous_bernoulli") / len(images))

    before = neg_elbo()
    for step in range(40):
        x = images[(step % 4) * 64 : (step % 4 + 1) * 64]
        q, _, p = model(x)
        optimizer.zero_grad(set_to_none=True)
        backward_beta_elbo(q, p.logits, x, beta=4 / 784, likelihood="continuous_bernoulli")
        optimizer.step()
    after = neg_elbo()
    assert after < before - 50, (before, after)
    assert torch.isfinite(kl_to_standard_normal(model.encoder(images))).all()


def test_labels_say_when_nats_are_only_a_cross_entropy():
    assert nats_label("bernoulli", binary_pixels=False) == "cross-entropy"
    assert nats_label("bernoulli", binary_pixels=True) == "log-likelihood"
    assert nats_label("continuous_bernoulli", binary_pixels=False) == "log-density"  # of pixel values on [0, 1]
    assert not is_log_likelihood("continuous_bernoulli", binary_pixels=True)
    with pytest.raises(ValueError):
        is_log_likelihood("gaussian", binary_pixels=True)
