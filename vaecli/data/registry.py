"""The datasets ``data=<name>`` picks from: each module of this folder registers its own.

A dataset is an object with ``ensure(root, say) -> Path`` (find, fetch and verify its files under
``root`` before any run folder exists: :class:`vaecli.data.sources.DataUnavailableError` when it
cannot), ``split(root, train, limit, say) -> Split`` (one split in memory, every image a float
row in [0, 1]) and ``where(root) -> str`` (what ``vae data`` reports). See docs/extending.md.
"""

from __future__ import annotations

from typing import Any

from vaecli.registry import Registry

DATASETS: Registry[Any] = Registry("dataset", "data.name", "vaecli.data", group="data")
