"""The adapter Hydra's plugin scan finds: ``hydra/launcher=batched`` (:mod:`vaecli.sweep.batched.launcher`).

Hydra keys a plugin by the module that defines its class and takes only classes defined under
``hydra_plugins``, so the class is subclassed here; all of its behaviour is vaecli's. Importing
the module registers the launcher's config node; torch is imported only when a sweep launches.
"""

from vaecli.sweep.batched import launcher


class BatchedLauncher(launcher.BatchedLauncher):
    """``hydra/launcher=batched``: :class:`vaecli.sweep.batched.launcher.BatchedLauncher`."""
