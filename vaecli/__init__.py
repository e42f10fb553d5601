"""vaecli: train, inspect, measure and sweep Variational Autoencoders, from the command line or a notebook.

The notebook API (docs/api.md), the same calls the commands are built on::

    import vaecli

    run_dir = vaecli.train("beta=0.01", "train.steps=500")     # a run folder, as `vae train` writes it
    run = vaecli.load_run(run_dir, device="cpu")              # its model, config, data and files
    test = run.dataset("test", 100)                           # its first 100 test images (and labels)
    q = run.encode(test.images)                               # q(z|x): q.loc, q.scale
    means = run.decode(q.loc)                                 # decoder means, rows of pixels in [0, 1]
    report = vaecli.evaluate(run, k=100, n=1000).to_json()    # what `vae evaluate` writes, not written

Names are imported on first use, so ``import vaecli`` (and ``vae --help``) stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "evaluate", "load_run", "train"]

_NAMES = {
    "load_run": ("vaecli.runfolder.checkpoint", "load_model"),
    "Run": ("vaecli.runfolder.checkpoint", "Loaded"),
    "evaluate": ("vaecli.measure.evaluation", "evaluate_run"),
}


def train(*overrides: str, resume: str | None = None):
    """Train one run from Hydra overrides (``"beta=0.1"``, ``"hydra.run.dir=runs/a"``); returns its folder.

    As `vae train` does, without the exit: a bad setting raises :class:`vaecli.errors.UsageError`,
    a run that could not finish :class:`vaecli.errors.RunError`.
    """
    from vaecli.run.command import train_run

    return train_run(list(overrides), resume=resume)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        from importlib import import_module

        module, attribute = _NAMES[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'vaecli' has no attribute {name!r}")
