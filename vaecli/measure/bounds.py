"""The importance-weighted bound (Burda et al. 2016) and the multi-sample ELBO, per image.

With z_1..z_k drawn from q(z|x) and log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x):

    log p(x) >= IWAE_k = log (1/k) sum_s w_s >= ELBO = (1/k) sum_s log w_s

IWAE_k grows with k towards log p(x); from the same draws IWAE_1 is the ELBO. Published MNIST
figures are -IWAE_5000 on binarised test images.

Memory stays bounded for any k: images and draws are cut so that one decoder pass holds at most
``latents_per_pass`` latents, and the bound is accumulated as a running log-sum-exp. Speed: the
decoder's last layer and the log-density over 784 pixels are nearly all the work, so
x . l = (x W) . h + x . b is taken per image once (no product over pixels per draw), and only
softplus(l) (plus log C(l) for a continuous Bernoulli) is summed over pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vaecli.config.runtime import return_freed_memory
from vaecli.errors import UsageError
from vaecli.models.likelihoods import DISCRETISED, cb_log_normalizer, nll_rows
from vaecli.models.mlp import VAE
from vaecli.objectives.beta import kl_to_standard_normal

TRIM_EVERY = 64  # images between two returns of freed memory to the OS (config.runtime.return_freed_memory)
LATENTS_PER_PASS = 1024  # latents decoded at once: 3 MB of logits, which stay in cache (4096 ran slower)
SOFTPLUS_GROUP = 16  # pixels whose factors 1 + exp(-|l|) are multiplied before one log: 784 = 49 * 16
ProgressHook = Callable[[int, int], None]  # (images done, images in all)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums over pixels and draws, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def softplus_sum(logits: torch.Tensor) -> torch.Tensor:
    """sum over the last dim of softplus(l) (float64), about twice as fast as F.softplus(l).sum(-1) on a CPU."""
    return softplus_sum_from_magnitudes(logits.sum(-1, dtype=accumulation_dtype(logits.device)), logits.abs())


def softplus_sum_from_magnitudes(logit_sum: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """sum softplus(l) from sum l and |l|; overwrites ``magnitudes`` (no new pixel-sized tensor).

    softplus(l) = relu(l) + log(1 + exp(-|l|)) and sum relu(l) = (sum l + sum |l|) / 2, summed in
    float64 because the two nearly cancel when many logits are large and negative. The log1p (not
    vectorised in torch's CPU kernels) becomes one log per group of 16 factors in (1, 2].
    """
    dtype = logit_sum.dtype
    relu_sum = 0.5 * (logit_sum + magnitudes.sum(-1, dtype=dtype))
    factors = magnitudes.neg_().exp_()
    if magnitudes.shape[-1] % SOFTPLUS_GROUP:
        return relu_sum + factors.log1p_().sum(-1, dtype=dtype)
    grouped = factors.add_(1.0).view(*magnitudes.shape[:-1], -1, SOFTPLUS_GROUP).prod(-1).log_()
    return relu_sum + grouped.sum(-1, dtype=dtype)


def bits_per_dim(nats: float, pixels: int) -> float:
    """Nats per image as bits per pixel: nats / (pixels * ln 2)."""
    return nats / (pixels * math.log(2.0))


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    """Mean over images and its standard error, std / sqrt(n) (0 for a single image)."""
    values = values.double()
    spread = float(values.std()) if len(values) > 1 else 0.0
    return float(values.mean()), spread / math.sqrt(len(values))


@dataclass
class PerImageBound:
    """Per-image figures in nats (float64, CPU), all from the same k draws per image."""

    k: int
    pixels: int
    iwae: torch.Tensor  # log p(x) >= iwae
    elbo: torch.Tensor  # mean over the draws of log w (Monte Carlo KL)
    reconstruction: torch.Tensor  # mean over the draws of -log p(x|z)
    kl: torch.Tensor  # closed-form KL(q(z|x) || p(z))
    discrete: bool = True  # nats of a probability of discrete pixels; a density of continuous ones has no bits/dim

    def summary(self) -> dict[str, float | int]:
        """Means over images with standard errors; the bound as -log p(x) <= nll_bound, nats and bits/dim."""
        nll, nll_se = mean_and_standard_error(-self.iwae)
        neg_elbo, neg_elbo_se = mean_and_standard_error(-self.elbo)
        return {
            "k": self.k,
            "images": len(self.iwae),
            "nll_bound_nats": nll,
            "nll_bound_se": nll_se,
            "nll_bound_bits_per_dim": bits_per_dim(nll, self.pixels) if self.discrete else None,
            "neg_elbo_nats": neg_elbo,
            "neg_elbo_se": neg_elbo_se,
            "neg_elbo_bits_per_dim": bits_per_dim(neg_elbo, self.pixels) if self.discrete else None,
            "recon_nats": float(self.reconstruction.mean()),
            "kl_nats": float(self.kl.mean()),
        }


class PixelLogDensity:
    """sum over pixels of log p(x|z) for a fixed chunk of images x, at many z at once.

    x . l = (x W) . h + x . b, with x W and x . b computed once per image; sum l = h . (sum of W's
    rows) + sum b. Each call then costs one pass through the decoder and a few in-place passes over
    one logits buffer: |l|, exp(-|l|), a product per group, and log C(|l|) for a continuous Bernoulli.
    Per-draw figures are combined in float64 (float32 on MPS, which has no float64).
    """

    def __init__(self, model: VAE, x: torch.Tensor):
        head = model.decoder.head
        self.body, self.weight, self.bias = model.decoder.body, head.weight, head.bias
        self.dtype = accumulation_dtype(head.weight.device)
        self.x_weight = x @ self.weight  # (b, hidden)
        self.x_bias = x @ self.bias  # (b,)
        self.weight_sum = self.weight.to(self.dtype).sum(0)
        self.bias_sum = self.bias.to(self.dtype).sum()
        self.continuous = model.decoder.likelihood == "continuous_bernoulli"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """z (s, b, d) -> log p(x_b | z_sb) of shape (s, b)."""
        hidden = self.body(z)
        shape, flat = hidden.shape[:-1], hidden.reshape(-1, hidden.shape[-1])
        magnitudes = torch.addmm(self.bias, flat, self.weight.t()).abs_()
        log_density = ((hidden * self.x_weight).sum(-1) + self.x_bias).to(self.dtype)
        if self.continuous:  # log C is even in l
            log_density += cb_log_normalizer(magnitudes).sum(-1, dtype=self.dtype).view(shape)
        logit_sum = flat.to(self.dtype) @ self.weight_sum + self.bias_sum
        return log_density - softplus_sum_from_magnitudes(logit_sum, magnitudes).view(shape)


class DecodedLogDensity:
    """sum over sub-pixels of log p(x|z) through the decoder itself: any architecture and likelihood
    (:class:`PixelLogDensity` is the MLP's faster route for a logit per sub-pixel)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor):
        self.decoder, self.x = model.decoder, x
        self.dtype = accumulation_dtype(x.device)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """z (s, b, d) -> log p(x_b | z_sb) of shape (s, b)."""
        outputs = self.decoder(z).logits
        return -nll_rows(outputs, self.x.expand(z.shape[0], *self.x.shape), self.decoder.likelihood).to(self.dtype)


def pixel_log_density(model: torch.nn.Module, x: torch.Tensor) -> PixelLogDensity | DecodedLogDensity:
    """The fast MLP route where it applies (a linear last layer giving one logit per sub-pixel), else the decoder's."""
    if isinstance(model, VAE) and model.likelihood != DISCRETISED:
        return PixelLogDensity(model, x)
    return DecodedLogDensity(model, x)


def log_weights(model: VAE, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log w and log p(x|z) (both (s, b)) for z = loc + scale * noise, noise (s, b, d) standard normal.

    log q(z|x) - log p(z) = sum_d [-noise^2/2 - log scale + z^2/2] (the log 2pi terms cancel).
    """
    q = model.encoder(x)
    return _log_weights(q.loc, q.scale, pixel_log_density(model, x), noise)


def _log_weights(
    loc: torch.Tensor, scale: torch.Tensor, log_density: Callable[[torch.Tensor], torch.Tensor], noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = loc + scale * noise
    log_px_z = log_density(z)
    log_ratio = 0.5 * (noise.square() - z.square()).sum(-1) + scale.log().sum(-1)  # log p(z) - log q(z|x)
    return log_px_z + log_ratio, log_px_z


def chunk_sizes(k: int, latents_per_pass: int) -> tuple[int, int]:
    """(images per chunk, draws per pass): one pass holds at most ``latents_per_pass`` latents."""
    images = max(1, latents_per_pass // k)
    return images, min(k, max(1, latents_per_pass // images))


@torch.inference_mode()
def importance_weighted_bound(
    model: VAE,
    images: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator | None = None,
    latents_per_pass: int = LATENTS_PER_PASS,
    on_progress: ProgressHook | None = None,
) -> PerImageBound:
    """IWAE_k, the k-draw ELBO, reconstruction and KL for each image (rows of ``images``), in nats.

    Noise comes from ``generator`` (a CPU generator: the same figures on every device for a seed
    and ``latents_per_pass``). The model should be in eval mode; it is left as it is.
    """
    if k < 1:
        raise UsageError(f"k={k}: the number of importance samples must be at least 1")
    if latents_per_pass < 1:
        raise UsageError(f"latents_per_pass={latents_per_pass} must be at least 1")
    if len(images) == 0:
        raise UsageError("no images to evaluate")
    device = model.decoder.head.weight.device  # every registered model's decoder names its output layer head
    dtype = accumulation_dtype(device)
    per_chunk, per_pass = chunk_sizes(k, latents_per_pass)
    results: dict[str, list[torch.Tensor]] = {"iwae": [], "elbo": [], "reconstruction": [], "kl": []}
    done = 0
    for x in images.split(per_chunk):
        x = x.to(device)
        q = model.encoder(x)
        log_density = pixel_log_density(model, x)
        log_sum = torch.full((len(x),), -math.inf, dtype=dtype, device=device)
        weight_sum = torch.zeros(len(x), dtype=dtype, device=device)
        nll_sum = torch.zeros(len(x), dtype=dtype, device=device)
        for start in range(0, k, per_pass):
            draws = min(per_pass, k - start)
            noise = torch.randn((draws, len(x), q.loc.shape[-1]), generator=generator).to(device)
            log_w, log_px_z = _log_weights(q.loc, q.scale, log_density, noise)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, 0))
            weight_sum += log_w.sum(0)
            nll_sum -= log_px_z.sum(0)
        results["iwae"].append((log_sum - math.log(k)).cpu().double())
        results["elbo"].append((weight_sum / k).cpu().double())
        results["reconstruction"].append((nll_sum / k).cpu().double())
        results["kl"].append(kl_to_standard_normal(q).sum(-1).cpu().double())
        done += len(x)
        if done // TRIM_EVERY > (done - len(x)) // TRIM_EVERY:
            return_freed_memory()  # bounded resident memory for any k and any number of images
        if on_progress is not None:
            on_progress(done, len(images))
    joined = {name: torch.cat(parts) for name, parts in results.items()}
    return PerImageBound(k=k, pixels=images.shape[-1], **joined)
