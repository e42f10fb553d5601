"""Pixel likelihoods p(x|z) from decoder outputs: Bernoulli, continuous Bernoulli, discretised logistic.

A Bernoulli decoder is a normalised likelihood only on binary pixels; on grey levels its
"nats" are a cross-entropy. The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) adds
the log-normaliser log C(l) so that the density integrates to 1 on [0, 1]:

    log p(x | l) = x * l - softplus(l) + log C(l),    C(l) = l / tanh(l / 2)

torch's own ContinuousBernoulli clamps probabilities, so beyond |l| ~ 16 its normaliser and
mean drift (at l = 30 the normaliser is off by 0.6 nats per pixel); the functions here work on
logits and are accurate for every logit.

The discretised logistic (Salimans et al. 2017, PixelCNN++; Kingma et al. 2016) is a probability
of 8-bit sub-pixels: each value k/255 gets the mass a logistic(mu, s) puts on its bin of width
1/255, the end bins taking the tails, so the 256 masses sum to 1 and its nats are a true
log-probability of the 8-bit image, reported in bits per dimension too. Its ``logits`` hold two
numbers per sub-pixel, concatenated along the last dim: the first half mu's logit (mu =
sigmoid(raw) in (0, 1)), computed from z by the decoder; the second half log s, a learned
parameter per sub-pixel (:class:`LearnedScale`, clamped below at :data:`MIN_LOG_SCALE`), so
``logits`` there has twice as many columns as the image has sub-pixels. The scale is not a
function of z: when it was (a second output channel), its gradient swamped the shared layers and
mu learned nothing in the first thousand steps (median |mu - x| stayed at the mean image's, 0.24,
on 32 x 32 colour shapes, where a Bernoulli decoder reached 0.13 in 600 steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import distributions
from torch.nn import functional as F

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "discretised_logistic")
DISCRETISED = "discretised_logistic"
LEVELS = 255  # an 8-bit sub-pixel is one of k / 255, k = 0..255
MIN_LOG_SCALE = -8.0  # s >= e^-8 ~ 0.00034: about a tenth of a bin, far narrower than any bin needs
INITIAL_LOG_SCALE = math.log(1 / 16)  # s = 1/16 (a standard deviation of 0.11, 29 levels) at the start


class LearnedScale(torch.nn.Module):
    """The discretised logistic's log s, one learned number per sub-pixel, appended to mu's logits."""

    def __init__(self, pixels: int):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.full((pixels,), INITIAL_LOG_SCALE))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.cat([raw, self.log_scale.expand_as(raw)], dim=-1)


_LOG_2 = math.log(2.0)
_SERIES_BELOW = 0.1  # |l| / 2 below which the series of log C is used; beyond it the closed form is exact
_MEAN_SERIES_BELOW = 0.2  # |l| below which the series of 1/l - 1/sinh(l) is used


def cb_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) = log(l / tanh(l/2)) per element: log 2 at l = 0, about log|l| for large |l|.

    With a = |l|/2 this is log(2a / tanh(a)): one tanh and one log, exact to float rounding for
    a >= 0.1 (tanh(a) rounds to 1 only where the true log differs from it by < 1e-7); below, a series.
    """
    a = logits.abs() * 0.5
    small = a < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch (and its gradient) finite
    closed = torch.log(2 * safe / torch.tanh(safe))
    a2 = a.square()
    series = _LOG_2 + a2 * (1 / 3 - a2 * (7 / 90 - a2 * (62 / 2835)))
    return torch.where(small, series, closed)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] under the continuous Bernoulli: sigmoid(l) - (1/l - 1/sinh(l)).

    The distribution is an exponential family in l with log-partition softplus(l) - log C(l),
    so this is also d/dl of that partition: the gradient of -log p(x|l) is cb_mean(l) - x.
    """
    small = logits.abs() < _MEAN_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(logits), logits)
    closed = safe.reciprocal() - torch.sinh(safe).reciprocal()
    l2 = logits.square()
    series = logits * (1 / 6 - l2 * (7 / 360 - l2 * (31 / 15120)))
    return torch.sigmoid(logits) - torch.where(small, series, closed)


def logit_gradient(logits: torch.Tensor, x: torch.Tensor, likelihood: str, weight: float) -> torch.Tensor:
    """``weight`` times d/dl of -log p(x|l): (mean of p) - x for both likelihoods.

    sigmoid(l) - x for a Bernoulli, cb_mean(l) - x for a continuous Bernoulli (its log-normaliser
    included). So backprop can start at the logits and skip the log/exp over every pixel that only
    logging needs; both training loops (solo and stacked) start their backward pass here.
    """
    if likelihood == DISCRETISED:  # no closed form worth keeping: autograd through its log-mass
        with torch.enable_grad():
            outputs = logits.detach().requires_grad_(True)
            total = nll_sum(outputs, x, likelihood, stacked=outputs.dim() == 3).sum()  # per member when stacked
            (gradient,) = torch.autograd.grad(total, outputs)
        return gradient.mul_(weight)
    mean = cb_mean if likelihood == "continuous_bernoulli" else torch.sigmoid
    return mean(logits.detach()).sub_(x).mul_(weight)


def output_scale(likelihood: str, pixels: int) -> torch.nn.Module:
    """What a decoder applies to its outputs: the learned scale for the discretised logistic, else nothing."""
    return LearnedScale(pixels) if likelihood == DISCRETISED else torch.nn.Identity()


def logistic_parts(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu in (0, 1), log s) from a discretised-logistic decoder's outputs (..., 2 * pixels)."""
    raw_loc, raw_log_scale = outputs.chunk(2, dim=-1)
    return torch.sigmoid(raw_loc), raw_log_scale.clamp(min=MIN_LOG_SCALE)


def discretised_logistic_log_mass(outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel for x in {k / 255}: the logistic's mass on x's bin, end bins open.

    With u, l the standardised bin edges, sigma(u) - sigma(l) = sigma(u) sigma(-l) (1 - e^-(u - l)),
    so log P = logsigmoid(u) + logsigmoid(-l) + log(-expm1(-(u - l))): no difference of two
    nearly equal numbers anywhere, exact for narrow and wide logistics alike. The first bin's mass
    is sigma(u) (l = -inf) and the last one's sigma(-l) (u = +inf).
    """
    loc, log_scale = logistic_parts(outputs)
    x = torch.round(x * LEVELS) / LEVELS  # the 8-bit value each grey level stands for
    inverse = torch.exp(-log_scale)
    half = 0.5 / LEVELS
    upper, lower = (x + half - loc) * inverse, (x - half - loc) * inverse
    first, last = x < half, x > 1 - half
    log_upper = torch.where(last, torch.zeros_like(upper), F.logsigmoid(upper))
    log_lower = torch.where(first, torch.zeros_like(lower), F.logsigmoid(-lower))
    width = torch.where(first | last, torch.zeros_like(upper), torch.log(-torch.expm1(-(upper - lower))))
    return log_upper + log_lower + width


def discretised_logistic_mean(outputs: torch.Tensor) -> torch.Tensor:
    """E[x] = sum_k k/255 P(k) = (1/255) sum_{k=1..255} P(x >= k/255): the exact mean of the 256 masses."""
    loc, log_scale = logistic_parts(outputs)
    edges = (torch.arange(1, LEVELS + 1, dtype=loc.dtype, device=loc.device) - 0.5) / LEVELS
    inverse = torch.exp(-log_scale)
    total = torch.zeros_like(loc)
    for edge in edges:  # one pass per edge: no (..., 255) tensor for a grid of 64 x 64 colour images
        total += torch.sigmoid((loc - edge) * inverse)
    return total / LEVELS


def nll_sum(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", stacked: bool = False
) -> torch.Tensor:
    """-log p(x|l) summed over images and pixels; with ``stacked``, one sum per member (the first dim).

    Written as sum(softplus(l)) - <x, l>, which runs about 1.5x faster on a CPU than
    ``F.binary_cross_entropy_with_logits(..., reduction="sum")``; the continuous Bernoulli adds
    -sum log C(l). Stacked logits are (members, batch, pixels) and ``x`` is one shared batch
    (batch, pixels), a product done as one matrix-vector product, or one batch per member.
    """
    if likelihood == DISCRETISED:
        log_mass = discretised_logistic_log_mass(logits, x.unsqueeze(0) if stacked and x.dim() == 2 else x)
        return -(log_mass.flatten(1).sum(1) if stacked else log_mass.sum())
    if not stacked:
        nll = F.softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1))
        return nll - cb_log_normalizer(logits).sum() if likelihood == "continuous_bernoulli" else nll
    shared = x.dim() == 2
    cross = torch.matmul(logits.flatten(1), x.reshape(-1)) if shared else (logits * x).flatten(1).sum(1)
    nll = F.softplus(logits).flatten(1).sum(1) - cross
    if likelihood == "continuous_bernoulli":
        nll = nll - cb_log_normalizer(logits).flatten(1).sum(1)
    return nll


class ContinuousBernoulli(distributions.ContinuousBernoulli):
    """torch's ContinuousBernoulli with a normaliser and mean that stay exact for saturated logits."""

    def _cont_bern_log_norm(self) -> torch.Tensor:
        return cb_log_normalizer(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return cb_mean(self.logits)


def nll_rows(logits: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-log p(x|l) summed over each image's sub-pixels: one figure per row of ``x`` (any leading dims)."""
    if likelihood == DISCRETISED:
        return -discretised_logistic_log_mass(logits, x).sum(-1)
    nll = F.softplus(logits).sum(-1) - (x * logits).sum(-1)
    return nll - cb_log_normalizer(logits).sum(-1) if likelihood == "continuous_bernoulli" else nll


class DiscretisedLogistic(distributions.Distribution):
    """p(x|z) over 8-bit sub-pixels x in {k / 255}: ``log_prob`` per sub-pixel, the exact ``mean``, ``sample``."""

    arg_constraints: dict = {}

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # mu's logit and log s, concatenated (see the module's docstring)
        super().__init__(batch_shape=logits.shape[:-1] + (logits.shape[-1] // 2,), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return discretised_logistic_log_mass(self.logits, value)

    @property
    def mean(self) -> torch.Tensor:
        return discretised_logistic_mean(self.logits)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        """A logistic draw (inverse CDF of a uniform), rounded to its 8-bit value, the tails in the end bins."""
        loc, log_scale = logistic_parts(self.logits)
        shape = torch.Size(sample_shape) + loc.shape
        with torch.no_grad():
            uniform = torch.rand(shape, device=loc.device).clamp_(1e-6, 1 - 1e-6)
            draw = loc + torch.exp(log_scale) * (torch.log(uniform) - torch.log1p(-uniform))
            return torch.round(draw.clamp(0, 1) * LEVELS) / LEVELS


def pixel_distribution(logits: torch.Tensor, likelihood: str) -> distributions.Distribution:
    """p(x|z) for decoder outputs; grey-level targets are allowed for all, so no support check."""
    if likelihood == DISCRETISED:
        return DiscretisedLogistic(logits)
    if likelihood == "bernoulli":
        return distributions.Bernoulli(logits=logits, validate_args=False)
    if likelihood == "continuous_bernoulli":
        return ContinuousBernoulli(logits=logits, validate_args=False)
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")


def is_log_likelihood(likelihood: str, binary_pixels: bool) -> bool:
    """Whether -log p(x|z) summed over pixels is a log-likelihood of discrete data (a probability).

    A Bernoulli is a probability only on {0, 1}; on grey levels no model can score below the
    summed pixel entropy, so its figures are a cross-entropy, not comparable with published
    likelihoods. A continuous Bernoulli is a density of pixel values on [0, 1]: a log-density of
    continuous data, which can be negative, not a probability of 8-bit images. A discretised
    logistic is a probability of the 8-bit images, binary or not.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")
    return likelihood == DISCRETISED or (likelihood == "bernoulli" and binary_pixels)


def is_density(likelihood: str) -> bool:
    """A density of continuous pixel values: its nats are no probability, and have no bits per dimension."""
    return likelihood == "continuous_bernoulli"


def nats_label(likelihood: str, binary_pixels: bool) -> str:
    """'log-likelihood', 'log-density' or 'cross-entropy': the word for every column or table that prints these nats."""
    if is_density(likelihood):
        return "log-density"
    return "log-likelihood" if is_log_likelihood(likelihood, binary_pixels) else "cross-entropy"


def run_nats_label(cfg: Any) -> str:
    """:func:`nats_label` of a run's config: its decoder's likelihood, on binarised pixels or not."""
    from vaecli.data.registry import binary_data

    return nats_label(str(cfg.model.likelihood), cfg.data.binarize != "none" or binary_data(cfg.data))
