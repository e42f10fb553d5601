"""Stopping on request: the first SIGINT or SIGTERM asks for a stop after the current step; a second Ctrl-C quits.

One process-wide :data:`STOP` holds the request, because signals are process-wide too. A run
polls it after every training step (one attribute read); a sweep's members also poll a stop
file in the sweep folder, so the `vae sweep` process can stop members it cannot signal itself
(joblib workers, submitit tasks). Exit codes follow the shell's convention: 128 + the signal's
number (130 for SIGINT, 143 for SIGTERM).

Only a second SIGINT (a person pressing Ctrl-C again) quits at once, and only when it comes at
least REPEAT_SECONDS after the first: a terminal signals a whole process tree, and launchers
forward what they get (submitit's local controller, srun), so one Ctrl-C or one ``scancel`` can
reach a member twice within milliseconds. Repeated SIGTERMs ask for the same stop again; a
scheduler's escalation after SIGTERM is SIGKILL, which the last periodic checkpoint survives.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_SECONDS = 1.0  # how often a member looks for the sweep's stop file
REPEAT_SECONDS = 0.5  # a SIGINT sooner than this after the first is the same request delivered twice


class Interrupted(KeyboardInterrupt):
    """A second signal: leave now. The last checkpoint written stays as it was."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.saved_step: int | None = None  # the step of the last good checkpoint, once known


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    return 128 + int(signum)


class StopRequests:
    """Whether this process was asked to stop, and by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stop_file: Path | None = None
        self.on_request: Callable[[int], None] | None = None
        self._depth = 0
        self._next_poll = 0.0
        self._since = 0.0  # time.monotonic() of the first request

    def handle(self, signum: int, frame: object = None) -> None:
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
            if self.on_request is not None:
                self.on_request(signum)
        elif signum == signal.SIGINT and time.monotonic() - self._since >= REPEAT_SECONDS:
            raise Interrupted(signum)

    def requested(self, now: float | None = None) -> bool:
        """True once a signal came (or the sweep's stop file appeared: polled at most once a second)."""
        if self.signum is not None:
            return True
        if self.stop_file is None:
            return False
        now = time.perf_counter() if now is None else now
        if now < self._next_poll:
            return False
        self._next_poll = now + POLL_SECONDS
        try:
            name = self.stop_file.read_text().strip()
        except OSError:
            return False
        self.signum, self._since = getattr(signal, name, signal.SIGTERM), time.monotonic()
        return True

    @contextmanager
    def installed(
        self, stop_file: Path | None = None, on_request: Callable[[int], None] | None = None
    ) -> Iterator[StopRequests]:
        """Handle SIGINT and SIGTERM inside the block; the outermost block starts with no request.

        Nested blocks (a sweep member running inside the `vae sweep` process) share the request.
        """
        outermost = self._depth == 0
        saved = (self.stop_file, self.on_request)
        previous = {}
        if outermost:
            self.signum, self._next_poll = None, 0.0
            try:
                previous = {number: signal.signal(number, self.handle) for number in SIGNALS}
            except ValueError:  # not the main thread: only the stop file can stop this run
                previous = {}
        self.stop_file = stop_file or self.stop_file
        self.on_request = on_request or self.on_request
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            self.stop_file, self.on_request = saved
            for number, handler in previous.items():
                signal.signal(number, handler)


STOP = StopRequests()
