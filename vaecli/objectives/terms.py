"""The loss terms every metrics row carries, whatever the objective: one list of names for every writer.

Torch-free on purpose: `vae sweep --report` reads these names without loading torch.
"""

from __future__ import annotations

# The seed's units first (means over pixels and latent dims), then nats per image.
TERM_NAMES = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")
SEED_UNIT_TERMS = TERM_NAMES[:3]


def terms_row(values: list[float]) -> dict[str, float]:
    """loss, reconstruction, kl, recon_nats, kl_nats as a row's terms; neg_elbo_nats summed here, in Python."""
    return dict(zip(TERM_NAMES, [*values, values[3] + values[4]]))
