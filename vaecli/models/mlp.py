"""Encoder, decoder and the VAE that joins them; each call returns a distribution.

Returning ``torch.distributions`` objects keeps the loss reading like the math
(q(z|x), p(x|z)) while the objective uses their parameters directly where that is faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, Normal
from torch.nn import functional as F

from vaecli.config.schema import choice, rule
from vaecli.data.registry import MNIST_SHAPE, image_shape
from vaecli.models.likelihoods import LIKELIHOODS, output_scale, pixel_distribution
from vaecli.models.registry import MODELS

IMAGE_SIZE = 28 * 28  # the seed's images: MNIST's 28 x 28 grey pixels
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def seed_init(module: nn.Module) -> None:
    """The seed's (Sonnet's) Linear init: truncated normal, std 1/sqrt(fan_in), zero bias.

    torch's default init starts with weights sqrt(3) times smaller; after the seed's 1024
    steps that costs about 15 nats per image on the test set.
    """
    if isinstance(module, nn.Linear):
        std = module.in_features**-0.5
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(module.bias)


def glorot_init(module: nn.Module) -> None:
    """Glorot & Bengio's (2010) uniform init, U(+-sqrt(6 / (fan_in + fan_out))), zero bias: Burda et
    al.'s (2016) init, as their code (yburda/iwae, nnet.Linear.random) draws it."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


INITS = {"seed": seed_init, "glorot": glorot_init}
SCALES = ("softplus", "exp")  # how the encoder's raw output becomes the posterior's scale
OUTPUT_BIASES = ("zero", "data_mean")


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers with an activation between them (and after the last, since a head follows)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> q(z|x), a factorized Normal whose scale is positive by construction."""

    def __init__(
        self,
        hidden_sizes: Sequence[int],
        latent_size: int,
        min_scale: float = 1e-4,
        activation: str = "relu",
        scale: str = "softplus",
        pixels: int = IMAGE_SIZE,
    ):
        super().__init__()
        self.body = mlp([pixels, *hidden_sizes], activation)
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else pixels, 2 * latent_size)
        self.min_scale, self.scale = min_scale, scale

    def forward(self, x: torch.Tensor) -> Normal:
        loc, raw_scale = self.head(self.body(x)).chunk(2, dim=-1)
        # softplus plus a floor: unlike the seed's square(), never exactly zero; exp is Burda et al.'s code's
        positive = F.softplus(raw_scale) if self.scale == "softplus" else raw_scale.exp()
        return Normal(loc, positive + self.min_scale, validate_args=False)


class Decoder(nn.Module):
    """z -> p(x|z), independent sub-pixels given by their logits (two outputs each for the discretised logistic)."""

    def __init__(
        self,
        hidden_sizes: Sequence[int],
        latent_size: int,
        likelihood: str = "bernoulli",
        activation: str = "relu",
        pixels: int = IMAGE_SIZE,
    ):
        super().__init__()
        self.body = mlp([latent_size, *hidden_sizes], activation)
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else latent_size, pixels)
        self.scale = output_scale(likelihood, pixels)
        self.likelihood = likelihood

    def forward(self, z: torch.Tensor) -> Distribution:
        # Grey-level targets in [0, 1] are the seed's convention, so no support check.
        return pixel_distribution(self.scale(self.head(self.body(z))), self.likelihood)


class VAE(nn.Module):
    def __init__(
        self,
        latent_size: int = 10,
        hidden_sizes: Sequence[int] = (100, 100),
        min_scale: float = 1e-4,
        likelihood: str = "bernoulli",
        activation: str = "relu",
        init: str = "seed",
        scale: str = "softplus",
        output_bias: str = "zero",
        image_shape: Sequence[int] = MNIST_SHAPE,
    ):
        super().__init__()
        known = likelihood in LIKELIHOODS and activation in ACTIVATIONS and init in INITS
        if not known or scale not in SCALES or output_bias not in OUTPUT_BIASES:
            raise ValueError(f"{likelihood!r}, {activation!r}, {init!r}, {scale!r} or {output_bias!r} is not known")
        self.latent_size, self.image_shape = latent_size, tuple(image_shape)
        self.likelihood, self.activation, self.output_bias = likelihood, activation, output_bias
        pixels = math.prod(self.image_shape)
        self.encoder = Encoder(hidden_sizes, latent_size, min_scale, activation, scale, pixels)
        self.decoder = Decoder(list(reversed(hidden_sizes)), latent_size, likelihood, activation, pixels)
        self.apply(INITS[init])

    @torch.no_grad()
    def initialise_from_data(self, images: torch.Tensor) -> None:
        """``model.output_bias=data_mean``: the decoder's output bias at the logit of each pixel's mean
        over the training images, clipped to [0.001, 0.999], so the first steps start from the mean
        image (Burda et al.'s code, yburda/iwae: datasets.get_train_bias_np); a no-op otherwise."""
        if self.output_bias == "data_mean":
            mean = images.mean(0) if not isinstance(images, torch.Tensor) else images.float().mean(0)  # packed: chunked
            mean = mean.clamp(0.001, 0.999).to(self.decoder.head.bias.device)
            self.decoder.head.bias.copy_(torch.logit(mean))  # mu's logit for a discretised logistic

    def prior(self, batch_shape: Sequence[int] = ()) -> Normal:
        zeros = torch.zeros(*batch_shape, self.latent_size, device=self.decoder.head.weight.device)
        return Normal(zeros, torch.ones_like(zeros), validate_args=False)

    def forward(self, x: torch.Tensor) -> tuple[Normal, torch.Tensor, Distribution]:
        """q(z|x), a reparameterized sample z ~ q, and p(x|z)."""
        q = self.encoder(x)
        z = q.rsample()
        return q, z, self.decoder(z)


@dataclass
class MlpConfig:
    """``model=mlp`` (conf/model/mlp.yaml): the seed's MLP encoder and decoder, and every default of it."""

    name: str = choice(("mlp",), "mlp")
    hidden_sizes: list[int] = rule(
        lambda sizes: all(size >= 1 for size in sizes), "sizes must be >= 1", default_factory=lambda: [100, 100]
    )
    min_scale: float = rule(lambda value: value > 0, "must be > 0", default=1e-4)  # floor under the posterior scale
    # or continuous_bernoulli: a normalised density on [0, 1] for grey levels; or discretised_logistic:
    # a probability of 8-bit sub-pixels with a learned scale (colour images; nats and bits/dim)
    likelihood: str = choice(LIKELIHOODS, "bernoulli")
    activation: str = choice(tuple(ACTIVATIONS), "relu")  # or tanh (Burda et al.)
    init: str = choice(tuple(INITS), "seed")  # or glorot: Glorot & Bengio's uniform (Burda et al.)
    scale: str = choice(SCALES, "softplus")  # posterior scale = softplus(raw) or exp(raw), + min_scale
    output_bias: str = choice(OUTPUT_BIASES, "zero")  # or data_mean: logit of the mean training pixel


def build_mlp(cfg: Any) -> VAE:
    """The MLP VAE a run's config describes."""
    return VAE(
        latent_size=int(cfg.latent_size),
        hidden_sizes=list(cfg.model.hidden_sizes),
        min_scale=float(cfg.model.min_scale),
        likelihood=str(cfg.model.likelihood),
        activation=str(cfg.model.activation),
        init=str(cfg.model.get("init", "seed")),
        scale=str(cfg.model.get("scale", "softplus")),
        output_bias=str(cfg.model.get("output_bias", "zero")),
        image_shape=image_shape(cfg.data),
    )


MODELS.register("mlp", build_mlp, schema=MlpConfig)
