"""Checks of command values shared by the core and the command line (a split name, a count)."""

from __future__ import annotations

from vaecli.errors import UsageError

SPLITS = ("test", "train")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"--split {split} is not one of {', '.join(SPLITS)}")


def check_count(value: int, option: str, minimum: int = 1) -> None:
    if value < minimum:
        raise UsageError(f"{option} {value} is too small: it must be >= {minimum}")
