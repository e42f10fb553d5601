"""q(z|x) of many images, a chunk at a time: the one loop behind `vae encode`, the latent figures and
the disentanglement grid.

Chunks are small on a CPU (their activations stay in cache and glibc reuses their buffers, see
config.runtime.reuse_freed_buffers) and large on an accelerator, where each call has a fixed cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vaecli.config.runtime import reuse_freed_buffers

CPU_CHUNK = 128  # images per encoder call on a CPU: fastest of 64..4096 for the conv net at 64x64
ACCELERATOR_CHUNK = 8192


def chunk_for(device: torch.device) -> int:
    return CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK


@torch.inference_mode()
def posterior(encoder: torch.nn.Module, images: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """loc and scale (n x latent_size, float32 on the CPU) of every image of ``images``.

    ``images`` is anything with ``split(chunk)`` giving float rows: a tensor, or packed images that
    unpack one chunk at a time.
    """
    reuse_freed_buffers()
    chunks: Iterable[torch.Tensor] = images.split(chunk_for(device))
    locs, scales = [], []
    for chunk in chunks:
        q = encoder(chunk.to(device))
        locs.append(q.loc.float().cpu())
        scales.append(q.scale.float().cpu())
    return torch.cat(locs), torch.cat(scales)
