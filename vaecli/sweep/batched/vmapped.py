"""G models of any registered architecture as one stacked model: torch.func's vmap over stacked weights.

:class:`vaecli.sweep.batched.model.StackedVAE` hand-writes the MLP as batched matrix products; for
every other architecture (``model=conv``) this module stacks each parameter of G models of one
architecture along a new first dim and runs the model's own forward under ``torch.func.vmap``
with ``functional_call``. vmap turns each convolution with stacked weights into one grouped
convolution (G groups) and each Linear into one batched product, so a step is one pass of the
architecture over all members; benchmarks/stacked_conv.py times it against grouped convolutions
written by hand and against stepping the members one after another.

Latent padding follows StackedVAE: members' latents are padded to the largest; the encoder
head's padded rows and the decoder's first layer's padded columns start at zero and z is masked,
so they get exactly zero gradient and stay zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from vaecli.sweep.batched.model import _latent_rows

ENCODER_HEAD = "encoder.head"  # every registered model's Linear giving (loc, raw scale)


def decoder_input(model: nn.Module) -> str:
    """The name of the decoder's first Linear, the layer that reads z."""
    name = next(name for name, module in model.decoder.named_modules() if isinstance(module, nn.Linear))
    return f"decoder.{name}"


class VmappedStack(nn.Module):
    """The members' parameters side by side (member i at index i of every stack), run through vmap."""

    def __init__(self, models: Sequence[nn.Module], build: Callable[[int], nn.Module], latent_size: int | None = None):
        """``build(latent_size)`` makes a fresh model of the members' architecture (a member taken out)."""
        super().__init__()
        if not models:
            raise ValueError("a stacked model needs at least one member")
        self.build = build
        self.latent_sizes = [int(model.latent_size) for model in models]
        self.latent_size = max(self.latent_sizes) if latent_size is None else latent_size
        self.likelihood = models[0].likelihood
        template = build(self.latent_size)
        for part in (template.encoder, template.decoder):  # vmap takes no channels-last tensors
            if hasattr(part, "memory_format"):
                part.memory_format = torch.contiguous_format
        self._template = [template]  # a list: its own parameters are never trained or saved
        self.names = [name for name, _ in template.named_parameters()]
        self.decoder_input = decoder_input(template)
        self.stacks = nn.ParameterList(
            [nn.Parameter(torch.stack([self._padded(model, name) for model in models])) for name in self.names]
        )
        mask = torch.zeros(len(models), 1, self.latent_size)
        for i, size in enumerate(self.latent_sizes):
            mask[i, 0, :size] = 1.0
        self.register_buffer("latent_mask", mask, persistent=False)
        self.padded = any(size < self.latent_size for size in self.latent_sizes)

    def _padded(self, model: nn.Module, name: str) -> torch.Tensor:
        """One member's parameter ``name``, zero-padded to the group's latent size."""
        tensor = model.get_parameter(name).detach()
        layer, size, padded = name.rsplit(".", 1)[0], int(model.latent_size), self.latent_size
        if layer == ENCODER_HEAD:
            rows = _latent_rows(size, padded)
            tensor = tensor.new_zeros(2 * padded, *tensor.shape[1:]).index_copy_(0, rows, tensor)
        elif layer == self.decoder_input and name.endswith(".weight"):
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], padded - size)], dim=1)
        return tensor.clone()

    def named_member_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Each stacked parameter under the name its slice has in a plain model's state_dict."""
        return list(zip(self.names, self.stacks))

    def member_slice(self, name: str, stacked: torch.Tensor, i: int) -> torch.Tensor:
        """Member i's part of ``stacked`` (a parameter or same-shaped optimizer state), padding cut off."""
        part, size, layer = stacked[i], self.latent_sizes[i], name.rsplit(".", 1)[0]
        if layer == ENCODER_HEAD:
            part = part.index_select(0, _latent_rows(size, self.latent_size).to(part.device))
        elif layer == self.decoder_input and name.endswith(".weight"):
            part = part[:, :size]
        return part.detach().contiguous().clone()

    def member_unslice(self, name: str, plain: torch.Tensor, i: int) -> torch.Tensor:
        """The inverse of :meth:`member_slice`: a plain model's tensor in member i's stacked layout."""
        size, layer = self.latent_sizes[i], name.rsplit(".", 1)[0]
        if layer == ENCODER_HEAD:
            rows = _latent_rows(size, self.latent_size).to(plain.device)
            plain = plain.new_zeros(2 * self.latent_size, *plain.shape[1:]).index_copy_(0, rows, plain)
        elif layer == self.decoder_input and name.endswith(".weight"):
            plain = torch.cat([plain, plain.new_zeros(plain.shape[0], self.latent_size - size)], dim=1)
        return plain

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return {name: self.member_slice(name, param, i) for name, param in self.named_member_parameters()}

    def member_model(self, i: int) -> nn.Module:
        model = self.build(self.latent_sizes[i])
        model.load_state_dict(self.member_state_dict(i))
        return model.to(self.stacks[0].device)

    def select(self, keep: Sequence[int]) -> VmappedStack:
        """A stacked model of members ``keep`` only, padded as before (used to drop failed members)."""
        return VmappedStack([self.member_model(i) for i in keep], self.build, self.latent_size)

    def _part(self, prefix: str) -> dict[str, torch.Tensor]:
        return {name[len(prefix) :]: stack for name, stack in zip(self.names, self.stacks) if name.startswith(prefix)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z|x), each (G, B, padded latent), for one shared batch (B, D) or one per member."""
        encoder = self._template[0].encoder

        def one(params: dict[str, torch.Tensor], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = functional_call(encoder, params, (images,))
            return q.loc, q.scale

        return vmap(one, in_dims=(0, None if x.dim() == 2 else 0))(self._part("encoder."), x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's outputs (G, B, outputs per image); padded latent dims are masked out of the input."""
        decoder = self._template[0].decoder
        z = z * self.latent_mask if self.padded else z

        def one(params: dict[str, torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
            return functional_call(decoder, params, (codes,)).logits

        return vmap(one)(self._part("decoder."), z)


class GroupedConvStack(VmappedStack):
    """``model=conv`` members stacked by hand: each convolution one grouped convolution (G groups),
    each Linear one batched product, on the same stacked parameters as :class:`VmappedStack`."""

    def __init__(self, models: Sequence[nn.Module], build: Callable[[int], nn.Module], latent_size: int | None = None):
        super().__init__(models, build, latent_size)
        template = self._template[0]
        self.shape, self.map = template.image_shape, template.decoder.map
        self.min_scale = template.encoder.min_scale
        self.index = {name: number for number, name in enumerate(self.names)}

    def select(self, keep: Sequence[int]) -> GroupedConvStack:
        return GroupedConvStack([self.member_model(i) for i in keep], self.build, self.latent_size)

    def _param(self, name: str) -> torch.Tensor:
        return self.stacks[self.index[name]]

    def _linear(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """h (G, B, in) through member g's Linear ``name``: (G, B, out)."""
        return torch.baddbmm(self._param(f"{name}.bias").unsqueeze(1), h, self._param(f"{name}.weight").transpose(1, 2))

    def _convs(self, prefix: str, maps: torch.Tensor, transposed: bool) -> torch.Tensor:
        """(B, G * channels, h, w) through every (transposed) convolution under ``prefix``, ReLU between."""
        sequence = self._template[0].get_submodule(prefix)
        layers = [(n, m) for n, m in sequence.named_children() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        groups = len(self.latent_sizes)
        for number, (index, layer) in enumerate(layers):
            weight = self._param(f"{prefix}.{index}.weight").flatten(0, 1)
            bias = self._param(f"{prefix}.{index}.bias").flatten()
            if transposed:
                maps = nn.functional.conv_transpose2d(
                    maps, weight, bias, layer.stride, layer.padding, layer.output_padding, groups
                )
            else:
                maps = nn.functional.conv2d(maps, weight, bias, layer.stride, layer.padding, groups=groups)
            if number < len(layers) - 1 or not transposed:
                maps = torch.relu(maps)
        return maps

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups, (channels, height, width) = len(self.latent_sizes), self.shape
        if x.dim() == 2:  # one batch for all: each group of channels reads it
            maps = x.view(-1, channels, height, width).repeat(1, groups, 1, 1)
        else:
            maps = (
                x.view(groups, -1, channels, height, width)
                .transpose(0, 1)
                .reshape(-1, groups * channels, height, width)
            )
        maps = self._convs("encoder.convs", maps.contiguous(memory_format=torch.channels_last), transposed=False)
        h = maps.reshape(maps.shape[0], groups, -1).transpose(0, 1)
        for index in range(0, len(self._template[0].encoder.body), 2):
            h = torch.relu(self._linear(f"encoder.body.{index}", h))
        loc, raw_scale = self._linear(ENCODER_HEAD, h).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + self.min_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        groups = len(self.latent_sizes)
        h = z * self.latent_mask if self.padded else z
        for index in range(0, len(self._template[0].decoder.body), 2):
            h = torch.relu(self._linear(f"decoder.body.{index}", h))
        batch = h.shape[1]
        maps = h.reshape(groups, batch, *self.map).transpose(0, 1).reshape(batch, groups * self.map[0], *self.map[1:])
        maps = self._convs("decoder.deconvs", maps.contiguous(memory_format=torch.channels_last), transposed=True)
        outputs = maps.reshape(batch, groups, -1).transpose(0, 1)
        if "decoder.scale.log_scale" in self.index:  # the discretised logistic's learned log s, per member
            scale = self._param("decoder.scale.log_scale").unsqueeze(1).expand_as(outputs)
            outputs = torch.cat([outputs, scale], dim=-1)
        return outputs
