"""Typer commands that look inside a trained model (reconstruct, traverse, sample, ...)."""

from __future__ import annotations

from collections.abc import Callable

import typer


def register(app: typer.Typer, fail: Callable[..., typer.Exit]) -> None:
    """Add the inspection commands to ``app``; ``fail(message, code=2)`` builds the error exit."""
