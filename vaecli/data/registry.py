"""The datasets ``data=<name>`` picks from: each module of this folder registers its own.

A dataset is an object with ``ensure(root, say, options) -> Path`` (find, fetch, verify or decode
its files under ``root`` before any run folder exists: :class:`vaecli.data.sources.DataUnavailableError`
when it cannot), ``split(root, train, limit, say, options) -> Split`` (one split in memory, every
image a float row in [0, 1]), ``shape(options) -> (channels, height, width)`` and
``where(root, options) -> str`` (what ``vae data`` reports). ``options`` is the run's ``data``
config node, for datasets with settings of their own (``data=folder``'s path and size); MNIST
ignores it. See docs/extending.md.
"""

from __future__ import annotations

from typing import Any

from vaecli.registry import Registry

DATASETS: Registry[Any] = Registry("dataset", "data.name", "vaecli.data", group="data")

MNIST_SHAPE = (1, 28, 28)


def options_for(method: Any, options: Any) -> dict[str, Any]:
    """``{"options": options}`` when a dataset's method takes them: a dataset written before datasets
    had settings of their own (``ensure(root, say)``, ``split(root, train, limit, say)``) still works."""
    import inspect

    parameters = inspect.signature(method).parameters
    takes = "options" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return {"options": options} if takes else {}


def binary_data(data: Any) -> bool:
    """Whether the dataset's own pixels are 0 or 1 (dSprites), so a Bernoulli is a likelihood unbinarised."""
    return bool(getattr(DATASETS.entry(str(data.name)), "binary", False))


def image_shape(data: Any) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``data`` (a run's ``data`` config node) describes."""
    entry = DATASETS.entry(str(data.name))
    shape = getattr(entry, "shape", None)
    return tuple(shape(data)) if shape is not None else MNIST_SHAPE
