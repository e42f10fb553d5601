"""G VAEs of one shape as one model: every Linear becomes a stack of G weights, run by baddbmm.

Members may differ in latent size: the latent is padded to the group's largest size and the
padded dimensions are dead by construction. Their encoder-head rows and first-decoder-layer
columns start at zero, the noise there is zero and z is masked, so loc and z are exactly zero
there, those weights get exactly zero gradient and Adam never moves them. KL is masked by the
caller (see :attr:`StackedVAE.latent_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vaecli.models.mlp import VAE


class StackedLinear(nn.Module):
    """G Linear layers applied to G inputs at once.

    Weights are stored (G, in, out), the transpose of nn.Linear's layout, so that their gradient
    comes out of bmm in the parameter's own layout and autograd does not copy it every step.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (G, in, out)
        self.bias = nn.Parameter(bias)  # (G, 1, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (G, B, in), or (B, in) when every member sees the same batch."""
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)  # a view: no copy of the batch
        return torch.baddbmm(self.bias, x, self.weight)


def _latent_rows(latent_size: int, padded: int) -> torch.Tensor:
    """Rows of the padded encoder head that hold a member's (loc, raw scale) outputs."""
    return torch.cat([torch.arange(latent_size), padded + torch.arange(latent_size)])


class StackedVAE(nn.Module):
    """The members' encoders and decoders side by side; member i lives at index i of every stack."""

    def __init__(self, models: Sequence[VAE], latent_size: int | None = None):
        """Stack ``models``, padding their latents to ``latent_size`` (default: the largest)."""
        super().__init__()
        if not models:
            raise ValueError("a stacked model needs at least one member")
        first = models[0]
        self.hidden_sizes = [layer.out_features for layer in _linears(first.encoder)[:-1]]
        self.min_scale = first.encoder.min_scale
        self.likelihood, self.activation = first.likelihood, first.activation
        self.act = torch.tanh if self.activation == "tanh" else F.relu
        self.latent_sizes = [model.latent_size for model in models]
        self.latent_size = max(self.latent_sizes) if latent_size is None else latent_size
        if self.latent_size < max(self.latent_sizes):
            raise ValueError(f"latent_size {latent_size} is smaller than a member's {max(self.latent_sizes)}")
        for model in models:
            shape = [layer.out_features for layer in _linears(model.encoder)[:-1]]
            same = (shape, model.encoder.min_scale, model.likelihood, model.activation)
            if same != (self.hidden_sizes, self.min_scale, self.likelihood, self.activation):
                raise ValueError("stacked members must share hidden sizes, min_scale, likelihood and activation")
        mask = torch.zeros(len(models), 1, self.latent_size)
        for i, size in enumerate(self.latent_sizes):
            mask[i, 0, :size] = 1.0
        self.register_buffer("latent_mask", mask, persistent=False)
        self.padded = any(size < self.latent_size for size in self.latent_sizes)

        self.layer_names = _layer_names(len(self.hidden_sizes))
        layers = [[self._padded(model, name) for model in models] for name in self.layer_names]
        stacked = [
            StackedLinear(
                torch.stack([w.T for w, _ in per_member]).contiguous(),
                torch.stack([b for _, b in per_member]).unsqueeze(1),
            )
            for per_member in layers
        ]
        body = len(self.hidden_sizes)
        self.encoder_body = nn.ModuleList(stacked[:body])
        self.encoder_head = stacked[body]
        self.decoder_body = nn.ModuleList(stacked[body + 1 : -1])
        self.decoder_head = stacked[-1]

    @property
    def decoder_input(self) -> str:
        """The decoder's first Linear, the one that reads z (its head when there are no hidden layers)."""
        return self.layer_names[len(self.hidden_sizes) + 1]

    def _padded(self, model: VAE, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's weight and bias for layer ``name``, zero-padded to the group's latent size."""
        layer: nn.Linear = model.get_submodule(name)
        weight, bias = layer.weight.detach(), layer.bias.detach()
        size, padded = model.latent_size, self.latent_size
        if name == "encoder.head":
            rows = _latent_rows(size, padded)
            weight = weight.new_zeros(2 * padded, weight.shape[1]).index_copy_(0, rows, weight)
            bias = bias.new_zeros(2 * padded).index_copy_(0, rows, bias)
        elif name == self.decoder_input:
            weight = torch.cat([weight, weight.new_zeros(weight.shape[0], padded - size)], dim=1)
        return weight.clone(), bias.clone()

    def named_member_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Each stacked parameter under the name its slice has in a plain VAE's state_dict."""
        layers = [*self.encoder_body, self.encoder_head, *self.decoder_body, self.decoder_head]
        return [
            (f"{name}.{kind}", getattr(layer, kind))
            for name, layer in zip(self.layer_names, layers)
            for kind in ("weight", "bias")
        ]

    def member_slice(self, name: str, stacked: torch.Tensor, i: int) -> torch.Tensor:
        """Member i's part of ``stacked`` (a parameter or same-shaped optimizer state), padding cut off."""
        size = self.latent_sizes[i]
        part = stacked[i][0] if name.endswith(".bias") else stacked[i].T  # nn.Linear's layout
        layer = name.rsplit(".", 1)[0]
        if layer == "encoder.head":
            part = part.index_select(0, _latent_rows(size, self.latent_size).to(part.device))
        elif layer == self.decoder_input and name.endswith(".weight"):
            part = part[:, :size]
        return part.detach().contiguous().clone()

    def member_unslice(self, name: str, plain: torch.Tensor, i: int) -> torch.Tensor:
        """The inverse of :meth:`member_slice`: a plain VAE tensor in member i's stacked layout, zero on padding.

        Used to put a member back from its checkpoint (weights and Adam moments alike); padding
        stays exactly zero, as training keeps it.
        """
        size, layer = self.latent_sizes[i], name.rsplit(".", 1)[0]
        if layer == "encoder.head":
            rows = _latent_rows(size, self.latent_size).to(plain.device)
            plain = plain.new_zeros(2 * self.latent_size, *plain.shape[1:]).index_copy_(0, rows, plain)
        elif layer == self.decoder_input and name.endswith(".weight"):
            plain = torch.cat([plain, plain.new_zeros(plain.shape[0], self.latent_size - size)], dim=1)
        return plain.unsqueeze(0) if name.endswith(".bias") else plain.T

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i as a plain ``VAE(latent_size=its own size)`` state_dict."""
        return {name: self.member_slice(name, param, i) for name, param in self.named_member_parameters()}

    def member_model(self, i: int) -> VAE:
        model = VAE(self.latent_sizes[i], self.hidden_sizes, self.min_scale, self.likelihood, self.activation)
        model.load_state_dict(self.member_state_dict(i))
        return model.to(self.encoder_head.weight.device)

    def select(self, keep: Sequence[int]) -> StackedVAE:
        """A stacked model of members ``keep`` only, padded as before (used to drop failed members)."""
        return StackedVAE([self.member_model(i) for i in keep], latent_size=self.latent_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z|x), each (G, B, padded latent); loc is exactly 0 on padded dims."""
        h = x
        for layer in self.encoder_body:
            h = self.act(layer(h))
        loc, raw_scale = self.encoder_head(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (G, B, 784); padded latent dims are masked out of the input."""
        h = z * self.latent_mask if self.padded else z
        for layer in self.decoder_body:
            h = self.act(layer(h))
        return self.decoder_head(h)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [child for child in module.modules() if isinstance(child, nn.Linear)]


def _layer_names(hidden_layers: int) -> list[str]:
    """A VAE's Linear layers (with ``hidden_layers`` hidden layers) by module name, in parameters() order."""
    body = [f"body.{2 * k}" for k in range(hidden_layers)]
    return [*(f"encoder.{name}" for name in (*body, "head")), *(f"decoder.{name}" for name in (*body, "head"))]
