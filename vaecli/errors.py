"""One error family for everything the package refuses or cannot finish on purpose.

The CLI maps a :class:`VaeError` to one ``error:`` line and its ``exit_code``; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class VaeError(Exception):
    """An error meant for the user: its message is one line that says what to do."""

    exit_code = 1
    label = "error"  # the word before the message on the terminal


class UsageError(VaeError, ValueError):
    """Bad input (an option, an override, a path): exit code 2, nothing is written."""

    exit_code = 2


class RunError(VaeError, RuntimeError):
    """The input was fine but the work could not finish (no data, divergence): exit code 1."""

    exit_code = 1


class Stopped(RunError):
    """A run or sweep stopped by SIGINT/SIGTERM after saving its state: exit code 128 + the signal's number."""

    label = "stopped"

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(text: object) -> str:
    """The first non-blank line of a message, so every error stays one line."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")
