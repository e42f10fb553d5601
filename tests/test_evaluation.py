import copy
import json
import math
import statistics

import pytest
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from vaecli.data.tensors import binarize_split, load_split
from vaecli.errors import UsageError
from vaecli.measure.bounds import (
    PerImageBound,
    bits_per_dim,
    chunk_sizes,
    importance_weighted_bound,
    log_weights,
    mean_and_standard_error,
    softplus_sum,
)
from vaecli.measure.evaluation import evaluate_model
from vaecli.measure.latents import kl_per_dimension, latent_usage, mutual_information, posterior_means
from vaecli.models.mlp import VAE

DEPENDENT = 5  # pixels of the toy model that depend on z; the other 779 have fixed logits


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


def toy_model(likelihood: str) -> VAE:
    """One latent dimension; a nonlinear decoder for 5 pixels; q(z|x) wider than the posterior."""
    torch.manual_seed(0)
    model = VAE(latent_size=1, hidden_sizes=[8], likelihood=likelihood)
    with torch.no_grad():
        model.decoder.body[0].weight.mul_(2.0)
        model.decoder.body[0].bias.normal_(0, 1)
        head = model.decoder.head
        head.weight[DEPENDENT:] = 0
        head.weight[:DEPENDENT] *= 2.5
        head.bias[DEPENDENT:] = -3.0
        encoder = model.encoder.head  # rows: loc, raw scale
        encoder.weight[1] = 0
        encoder.bias[1] = inverse_softplus(1.3)
        encoder.weight[0] *= 0.5
        encoder.bias[0] = 0.2
    return model.eval()


def toy_images(likelihood: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if likelihood == "bernoulli":
        x = (torch.rand(4, 784, generator=generator) < 0.05).float()
        x[:, :DEPENDENT] = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 1, 0, 0]])
        return x
    x = torch.rand(4, 784, generator=generator) * 0.2
    x[:, :DEPENDENT] = torch.rand(4, DEPENDENT, generator=generator)
    return x


def exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the integral of p(z) p(x|z) over z, by quadrature in float64 with torch's own densities."""
    double = copy.deepcopy(model).double()
    grid = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
    with torch.no_grad():
        p = double.decoder(grid[:, None])
        log_likelihood = torch.stack([p.log_prob(image.double()).sum(-1) for image in x])
    log_prior = Normal(0.0, 1.0).log_prob(grid)
    return torch.logsumexp(log_likelihood + log_prior, dim=1) + math.log(float(grid[1] - grid[0]))


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_iwae_converges_to_the_exact_log_likelihood_of_a_toy_model(likelihood):
    model, x, k = toy_model(likelihood), toy_images(likelihood), 10_000
    exact = exact_log_px(model, x)
    bound = importance_weighted_bound(model, x, k, generator=torch.Generator().manual_seed(1))
    # the estimator's standard error, by the delta method from an independent set of k weights
    with torch.no_grad():
        log_w, _ = log_weights(model, x, torch.randn(k, len(x), 1, generator=torch.Generator().manual_seed(2)))
    w = (log_w.double() - log_w.double().max(0).values).exp()
    standard_error = w.std(0) / w.mean(0) / math.sqrt(k)
    assert ((bound.iwae - exact).abs() < 5 * standard_error + 2e-3).all(), (bound.iwae - exact, standard_error)
    assert ((exact - bound.elbo) > 1.0).all()  # the ELBO is far below: the test can tell the two apart


def test_elbo_below_iwae_and_iwae_grows_with_k():
    torch.manual_seed(3)
    model = VAE(latent_size=4, hidden_sizes=[32]).eval()
    x = (torch.rand(64, 784) < torch.rand(64, 1) * 0.4).float()
    bounds = {}
    for k in (1, 5, 50, 500):
        bounds[k] = importance_weighted_bound(model, x, k, generator=torch.Generator().manual_seed(k))
        assert (bounds[k].elbo <= bounds[k].iwae + 1e-9).all()  # Jensen, for the same draws, image by image
    elbo, se = mean_and_standard_error(bounds[500].elbo)
    iwae = [float(bounds[k].iwae.mean()) for k in (5, 50, 500)]
    assert elbo < iwae[0] < iwae[1] < iwae[2], (elbo, iwae)
    one_draw, one_draw_se = mean_and_standard_error(bounds[1].iwae)  # an unbiased one-draw ELBO estimate
    assert abs(one_draw - elbo) < 4 * math.hypot(se, one_draw_se)


def test_iwae_1_is_the_single_draw_elbo_of_the_same_draw():
    torch.manual_seed(4)
    model = VAE(latent_size=3, hidden_sizes=[16]).eval()
    x = (torch.rand(10, 784) < 0.3).float()
    bound = importance_weighted_bound(model, x, 1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(bound.iwae, bound.elbo)
    noise = torch.randn((1, 10, 3), generator=torch.Generator().manual_seed(5))[0]  # the same draw, as one pass
    with torch.no_grad():
        q = model.encoder(x)
        z = q.loc + q.scale * noise
        elbo = model.decoder(z).log_prob(x).sum(-1) + model.prior().log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    assert torch.allclose(bound.iwae.float(), elbo, atol=2e-3)
    assert torch.allclose(bound.reconstruction.float(), -model.decoder(z).log_prob(x).sum(-1).detach(), atol=2e-3)


def test_any_k_runs_in_passes_of_bounded_size():
    torch.manual_seed(6)
    model = VAE(latent_size=2, hidden_sizes=[16]).eval()
    sizes: list[int] = []
    model.decoder.body.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].numel() // 2))
    x = (torch.rand(3, 784) < 0.3).float()
    bound = importance_weighted_bound(model, x, 5000, generator=torch.Generator().manual_seed(0), latents_per_pass=512)
    assert max(sizes) <= 512 and sum(sizes) == 3 * 5000
    assert torch.isfinite(bound.iwae).all()
    assert (
        chunk_sizes(5000, 1024) == (1, 1024)
        and chunk_sizes(1, 1024) == (1024, 1)
        and chunk_sizes(1000, 4096) == (4, 1000)
    )


def test_summary_in_nats_and_bits_per_dimension_with_standard_errors():
    assert math.isclose(bits_per_dim(784 * math.log(2), 784), 1.0)
    assert math.isclose(bits_per_dim(86.76, 784), 86.76 / 784 / math.log(2))
    values = torch.tensor([-90.0, -85.5, -88.25, -91.0])
    mean, error = mean_and_standard_error(values)
    assert math.isclose(mean, statistics.mean(values.tolist()))
    assert math.isclose(error, statistics.stdev(values.tolist()) / 2)
    bound = PerImageBound(
        k=7, pixels=784, iwae=values.double(), elbo=values.double() - 3, reconstruction=-values, kl=values * 0
    )
    summary = bound.summary()
    assert math.isclose(summary["nll_bound_nats"], 88.6875)
    assert math.isclose(summary["nll_bound_bits_per_dim"], 88.6875 / (784 * math.log(2)))
    assert math.isclose(summary["neg_elbo_nats"], 91.6875) and summary["k"] == 7 and summary["images"] == 4


def test_progress_is_reported_and_bad_requests_are_usage_errors():
    model = VAE(latent_size=2, hidden_sizes=[8]).eval()
    x = torch.rand(10, 784)
    seen: list[tuple[int, int]] = []
    importance_weighted_bound(
        model, x, 300, latents_per_pass=1024, on_progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]
    for bad in ({"k": 0}, {"k": 5, "latents_per_pass": 0}):
        with pytest.raises(UsageError):
            importance_weighted_bound(model, x, **bad)
    with pytest.raises(UsageError):
        importance_weighted_bound(model, x[:0], 5)


def test_fast_softplus_sum_matches_float64_softplus():
    torch.manual_seed(7)
    logits = torch.cat([torch.randn(64, 784) * 12, torch.full((1, 784), 40.0), torch.full((1, 784), -40.0)])
    expected = F.softplus(logits.double()).sum(-1)
    error = (softplus_sum(logits) - expected).abs()
    assert error.max() < 2e-5, error.max()  # sums near 4000 nats: a float32 F.softplus(l).sum(-1) is off by 5e-4
    odd = torch.randn(5, 30)  # not a multiple of the group: log1p per pixel
    assert torch.allclose(softplus_sum(odd), F.softplus(odd.double()).sum(-1))


def model_with_known_latent_use() -> VAE:
    """Dims 0, 2, 3 carry the image; 1 and 4 sit on the prior; 5 is constant (inactive) but off the prior."""
    torch.manual_seed(8)
    model = VAE(latent_size=6, hidden_sizes=[32]).eval()
    with torch.no_grad():
        head = model.encoder.head  # rows 0..5: loc, rows 6..11: raw scale
        head.weight[[0, 2, 3]] *= 10
        head.weight[[1, 4, 5]] = 0
        head.bias[[1, 4]] = 0.0
        head.bias[5] = 2.0
        head.weight[[7, 10, 11]] = 0
        head.bias[[7, 10, 11]] = inverse_softplus(1.0 - model.encoder.min_scale)
    return model


def test_active_units_and_collapsed_dimensions_of_a_model_with_known_unused_dims():
    model = model_with_known_latent_use()
    images = torch.rand(400, 784) * torch.rand(400, 1)  # images differ in brightness as well as in detail
    usage = latent_usage(model, images, generator=torch.Generator().manual_seed(0))
    assert usage.active.nonzero().flatten().tolist() == [0, 2, 3]
    assert usage.collapsed.nonzero().flatten().tolist() == [1, 4]
    assert usage.active_units == 3
    # cross-checks against the inspection code's own computations
    means = posterior_means(model, images)
    assert torch.allclose(usage.mean_variance.float(), means.var(0), rtol=1e-4, atol=1e-9)
    assert torch.allclose(usage.kl_per_dim.float(), kl_per_dimension(model, images), rtol=1e-4, atol=1e-6)
    assert math.isclose(float(usage.kl_per_dim[5]), 2.0, rel_tol=1e-3)  # 0.5 * loc^2 with the prior's scale
    rows = usage.rows()
    assert [row["active"] for row in rows] == [True, False, True, True, False, False]
    assert usage.summary()["collapsed_dims"] == 2 and usage.summary()["latent_size"] == 6


def test_mutual_information_matches_the_gaussian_closed_form():
    torch.manual_seed(9)
    n, dims, spread, scale = 3000, 2, 1.0, 0.5
    loc = torch.randn(n, dims, dtype=torch.float64) * spread
    scales = torch.full((n, dims), scale, dtype=torch.float64)
    # x -> mean ~ N(0, spread^2), z | x ~ N(mean, scale^2): I = dims/2 log(1 + spread^2 / scale^2)
    expected = dims * 0.5 * math.log(1 + spread**2 / scale**2)
    for estimate in mutual_information(loc, scales, torch.Generator().manual_seed(0)):  # He et al.'s, bounded
        assert abs(estimate - expected) < 0.08, (estimate, expected)
    same = mutual_information(
        torch.full((2000, 3), 0.5, dtype=torch.float64), torch.full((2000, 3), 0.7, dtype=torch.float64)
    )
    assert all(abs(estimate) < 0.1 for estimate in same)  # every q(z|x) equal: z says nothing about x


def test_mutual_information_of_a_batch_mixture_is_capped_by_log_batch():
    torch.manual_seed(10)
    loc = torch.randn(3000, 2, dtype=torch.float64) * 10
    scales = torch.full((3000, 2), 0.1, dtype=torch.float64)  # true I ~ 9.2 nats, beyond log(100)
    _, batched = mutual_information(loc, scales, torch.Generator().manual_seed(0), batch=100)
    assert math.log(100) - 0.3 < batched <= math.log(100) + 1e-9
    assert mutual_information(loc, scales, torch.Generator().manual_seed(0))[1] <= math.log(3000) + 1e-9


def test_only_the_bounded_estimate_is_capped_he_et_al_s_can_exceed_log_n():
    """Near-deterministic codes far apart: every q(z|x) is its own cluster, so both estimates sit at
    log n; the sampled form never passes it, the analytic one does by its noise (issue 19's 6.926 > 6.91)."""
    loc = torch.arange(1000, dtype=torch.float64).view(-1, 1) * 100.0
    scales = torch.full((1000, 1), 0.01, dtype=torch.float64)
    over = 0
    for seed in range(20):
        analytic, bounded = mutual_information(loc, scales, torch.Generator().manual_seed(seed))
        assert bounded <= math.log(1000) + 1e-9 and abs(analytic - math.log(1000)) < 0.2
        over += analytic > math.log(1000)
    assert over > 0  # so the analytic figure is never labelled with the bound


def test_evaluation_of_a_real_slice_says_what_its_nats_are(data_root):
    grey = load_split("mnist", data_root, train=False, limit=120).images
    binary = binarize_split(grey, "static", train=False)
    torch.manual_seed(11)
    model = VAE(latent_size=3, hidden_sizes=[32])
    first = evaluate_model(model, binary, k=20, binarize="static", seed=3)
    assert model.training  # left as it was
    again = evaluate_model(model, binary, k=20, binarize="static", seed=3)
    assert json.dumps(first.to_json()) == json.dumps(again.to_json())  # reproducible
    report = first.to_json()
    assert report["setup"] == {
        "split": "test",
        "images": 120,
        "k": 20,
        "likelihood": "bernoulli",
        "binarize": "static",
        "binary_pixels": True,
        "nats_are": "log-likelihood",
        "held_out": True,
        "seed": 3,
        "latents_per_pass": 1024,
        "mi_batch": None,
    }
    assert report["bound"]["nll_bound_nats"] <= report["bound"]["neg_elbo_nats"]
    assert len(first.dimension_rows()) == 3
    assert evaluate_model(model, grey, k=2).meaning["nats_are"] == "cross-entropy"
    continuous = VAE(latent_size=3, hidden_sizes=[32], likelihood="continuous_bernoulli")
    assert evaluate_model(continuous, grey, k=2).meaning["nats_are"] == "log-density"  # of continuous pixel values
    with pytest.raises(UsageError):
        evaluate_model(model, grey, k=0)
