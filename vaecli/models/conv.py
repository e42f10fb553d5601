"""``model=conv``: Burgess et al.'s (2018) convolutional encoder and decoder, for any square image.

Encoder: 4 x 4 convolutions of stride 2 (32 channels each), two fully connected layers of 256,
then the Gaussian head; decoder: its mirror, with transposed convolutions. At 64 x 64 that is
the paper's network (64 -> 32 -> 16 -> 8 -> 4). Smaller images take the first n convolutions of
``model.channels``, n the most that leave a map of at least 3 x 3 (:func:`conv_sizes`): three
at 32 x 32 (a 4 x 4 map) and at 28 x 28 (14 -> 7 -> 3). Each transposed convolution adds an
``output_padding`` of 0 or 1 so the decoder gives back exactly the size the encoder took, odd
sizes (7 -> 3 -> 7) included. The model takes and gives flat rows (n, channels * height *
width), the form every objective, bound and picture uses; it reshapes inside, into channels-last
memory order, which the CPU's convolutions run 1.2x faster on (benchmarks/train_speed.py --conv).
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
from vaecli.models.mlp import mlp
from vaecli.models.registry import MODELS

KERNEL, STRIDE, PADDING = 4, 2, 1
MIN_MAP = 3  # the smallest feature map the encoder ends on (pixels per side)


def conv_sizes(size: int, layers: int) -> list[int]:
    """The map's side before each convolution and after the last one, for the most of ``layers``
    convolutions (at least one) that leave at least ``MIN_MAP`` pixels: [64, 32, 16, 8, 4], [28, 14, 7, 3]."""
    sizes = [size]
    while len(sizes) <= layers:
        following = (sizes[-1] + 2 * PADDING - KERNEL) // STRIDE + 1
        if following < MIN_MAP and len(sizes) > 1:
            break
        sizes.append(following)
    return sizes


class ConvEncoder(nn.Module):
    """x (rows) -> q(z|x): convolutions, fully connected layers, then loc and a positive scale."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int], hidden: Sequence[int], latent: int, floor: float):
        super().__init__()
        self.shape = tuple(shape)
        sizes = conv_sizes(self.shape[1], len(channels))
        widths = [self.shape[0], *channels[: len(sizes) - 1]]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(fan_in, fan_out, KERNEL, STRIDE, PADDING), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        flat = widths[-1] * sizes[-1] ** 2
        self.body = mlp([flat, *hidden])
        self.head = nn.Linear(hidden[-1] if hidden else flat, 2 * latent)
        self.min_scale = floor
        self.memory_format = torch.channels_last  # torch.contiguous_format under vmap, which has no other

    def forward(self, x: torch.Tensor) -> Normal:
        lead = x.shape[:-1]
        images = x.reshape(-1, *self.shape).contiguous(memory_format=self.memory_format)
        features = self.convs(images).flatten(1)
        loc, raw_scale = self.head(self.body(features)).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        return Normal(loc.reshape(*lead, -1), scale.reshape(*lead, -1), validate_args=False)


class ConvDecoder(nn.Module):
    """z -> p(x|z): the encoder's mirror, ending on the likelihood's outputs per sub-pixel, as rows."""

    def __init__(
        self, shape: Sequence[int], channels: Sequence[int], hidden: Sequence[int], latent: int, likelihood: str
    ):
        super().__init__()
        self.shape, self.likelihood = tuple(shape), likelihood
        sizes = conv_sizes(self.shape[1], len(channels))
        widths = [self.shape[0], *channels[: len(sizes) - 1]]
        self.map = (widths[-1], sizes[-1], sizes[-1])
        self.body = mlp([latent, *reversed(hidden), math.prod(self.map)])  # ReLU after the last too: a conv follows
        layers: list[nn.Module] = []
        for index in reversed(range(len(widths) - 1)):
            extra = sizes[index] - STRIDE * sizes[index + 1]  # 0 or 1: back to the encoder's exact size
            layers.append(nn.ConvTranspose2d(widths[index + 1], widths[index], KERNEL, STRIDE, PADDING, extra))
            layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers[:-1])  # no activation on the outputs
        self.memory_format = torch.channels_last
        self.scale = output_scale(likelihood, math.prod(self.shape))

    @property
    def head(self) -> nn.Module:
        """The output layer (not a second registration of it: state_dict names each weight once)."""
        return self.deconvs[-1]

    def forward(self, z: torch.Tensor) -> Distribution:
        lead = z.shape[:-1]
        maps = self.body(z.reshape(-1, z.shape[-1])).reshape(-1, *self.map)
        maps = maps.contiguous(memory_format=self.memory_format)
        outputs = self.deconvs(maps).reshape(*lead, -1)  # channel-major, as the data's rows (reshape copies)
        return pixel_distribution(self.scale(outputs), self.likelihood)


class ConvVAE(nn.Module):
    """The model surface of :mod:`vaecli.models.registry` over :class:`ConvEncoder` and :class:`ConvDecoder`."""

    def __init__(
        self,
        latent_size: int = 10,
        image_shape: Sequence[int] = MNIST_SHAPE,
        channels: Sequence[int] = (32, 32, 32, 32),
        hidden_sizes: Sequence[int] = (256, 256),
        min_scale: float = 1e-4,
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"{likelihood!r} is not known")
        self.latent_size, self.image_shape, self.likelihood = latent_size, tuple(image_shape), likelihood
        self.encoder = ConvEncoder(self.image_shape, channels, hidden_sizes, latent_size, min_scale)
        self.decoder = ConvDecoder(self.image_shape, channels, hidden_sizes, latent_size, likelihood)

    def prior(self, batch_shape: Sequence[int] = ()) -> Normal:
        zeros = torch.zeros(*batch_shape, self.latent_size, device=self.encoder.head.weight.device)
        return Normal(zeros, torch.ones_like(zeros), validate_args=False)

    def forward(self, x: torch.Tensor) -> tuple[Normal, torch.Tensor, Distribution]:
        q = self.encoder(x)
        z = q.rsample()
        return q, z, self.decoder(z)

    def describe(self) -> str:
        """The layers as train.log states them: how the network adapted to the image size."""
        layers = len(self.encoder.convs) // 2
        maps = " -> ".join(f"{size}x{size}" for size in conv_sizes(self.image_shape[1], layers))
        return (
            f"model=conv: {layers} stride-2 4x4 convolutions ({maps}) for {'x'.join(map(str, self.image_shape))} images"
        )


@dataclass
class ConvConfig:
    """``model=conv`` (conf/model/conv.yaml): Burgess et al.'s (2018) network and its settings."""

    name: str = choice(("conv",), "conv")
    # one 4x4 stride-2 convolution per entry, as many as leave a map of at least 3x3 (4 at 64x64, 3 at 32x32 / 28x28)
    channels: list[int] = rule(
        lambda sizes: len(sizes) >= 1 and all(size >= 1 for size in sizes),
        "must be one or more channel counts >= 1",
        default_factory=lambda: [32, 32, 32, 32],
    )
    hidden_sizes: list[int] = rule(
        lambda sizes: all(size >= 1 for size in sizes), "sizes must be >= 1", default_factory=lambda: [256, 256]
    )
    min_scale: float = rule(lambda value: value > 0, "must be > 0", default=1e-4)
    likelihood: str = choice(LIKELIHOODS, "bernoulli")  # discretised_logistic for 8-bit (colour) images


def build_conv(cfg: Any) -> ConvVAE:
    """The conv VAE a run's config describes, shaped for its data's images."""
    return ConvVAE(
        latent_size=int(cfg.latent_size),
        image_shape=image_shape(cfg.data),
        channels=list(cfg.model.channels),
        hidden_sizes=list(cfg.model.hidden_sizes),
        min_scale=float(cfg.model.min_scale),
        likelihood=str(cfg.model.likelihood),
    )


MODELS.register("conv", build_conv, schema=ConvConfig)
