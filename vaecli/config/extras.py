"""Optional extras (``vaecli[tensorboard]``, ``vaecli[optuna]``): is one installed, and the error when not.

Checked before Hydra makes a folder, so asking for a feature whose packages are missing costs
one line and exit code 2, never an empty run folder. The check only looks for the packages
(no import), so it stays fast on every command.
"""

from __future__ import annotations

import importlib.util

from vaecli.errors import UsageError

# extra name -> the top-level modules it must make importable
EXTRAS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "optuna": ("optuna",),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: present in sys.modules as None (import blocked)
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when the extra is usable)."""
    return [module for module in EXTRAS[extra] if not installed(module)]


def require(extra: str, wanted_by: str) -> None:
    """Raise a one-line :class:`UsageError` naming the pip command when ``extra`` is not installed."""
    absent = missing(extra)
    if absent:
        raise UsageError(
            f"{wanted_by} needs {', '.join(absent)}, which is not installed: pip install 'vaecli[{extra}]'"
        )
