import math

import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from vaecli.models.likelihoods import nll_sum
from vaecli.models.mlp import VAE
from vaecli.objectives.beta import backward_beta_elbo, elbo_terms, kl_to_standard_normal


def test_kl_matches_monte_carlo_estimate():
    torch.manual_seed(0)
    q = Normal(torch.randn(3, 4), torch.rand(3, 4) + 0.2)
    prior = Normal(torch.zeros(3, 4), torch.ones(3, 4))
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    closed = kl_to_standard_normal(q)
    assert torch.allclose(closed, monte_carlo, atol=0.02)
    assert torch.allclose(closed, kl_divergence(q, prior), atol=1e-5)


def test_bernoulli_nll_equals_torch_cross_entropy_for_grey_targets():
    logits, targets = torch.randn(16, 784) * 5, torch.rand(16, 784)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert torch.allclose(nll_sum(logits, targets, "bernoulli"), expected, rtol=1e-5)


def test_terms_use_the_seeds_per_dimension_means_and_per_image_nats():
    torch.manual_seed(1)
    x, logits = torch.rand(8, 784), torch.randn(8, 784)
    q = Normal(torch.randn(8, 10), torch.rand(8, 10) + 0.1)
    terms = elbo_terms(q, logits, x, beta=0.5)
    seed_reconstruction = F.binary_cross_entropy_with_logits(logits, x)  # mean over batch and pixels
    seed_kl = kl_to_standard_normal(q).mean()  # mean over batch and latent dims
    assert math.isclose(float(terms.reconstruction), float(seed_reconstruction), rel_tol=1e-5)
    assert math.isclose(float(terms.kl), float(seed_kl), rel_tol=1e-5)
    assert math.isclose(float(terms.loss), float(seed_reconstruction + 0.5 * seed_kl), rel_tol=1e-5)
    assert math.isclose(float(terms.recon_nats), float(seed_reconstruction) * 784, rel_tol=1e-5)
    assert math.isclose(float(terms.neg_elbo_nats), float(terms.recon_nats + terms.kl_nats), rel_tol=1e-6)


def test_fast_backward_gives_the_gradient_of_the_loss():
    torch.manual_seed(2)
    model, x = VAE(latent_size=4, hidden_sizes=[32]), torch.rand(16, 784)

    def gradients(fast: bool) -> list[torch.Tensor]:
        torch.manual_seed(3)
        model.zero_grad(set_to_none=True)
        q, _, p = model(x)
        if fast:
            backward_beta_elbo(q, p.logits, x, beta=0.3)
        else:
            elbo_terms(q, p.logits, x, beta=0.3).loss.backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    for fast, slow in zip(gradients(True), gradients(False)):
        assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-4)


def test_posterior_scale_is_positive_even_for_very_negative_inputs():
    model = VAE(latent_size=3, hidden_sizes=[8])
    with torch.no_grad():
        model.encoder.head.bias.fill_(-1e4)
    q = model.encoder(torch.rand(5, 784))
    assert (q.scale > 0).all()
    assert torch.isfinite(kl_to_standard_normal(q)).all()
