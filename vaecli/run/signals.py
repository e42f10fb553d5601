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

Inside a submitit job, submitit's preemption signal (USR2 by default, sent before a SLURM time
limit) is handed over: it stops the run like SIGTERM, and once the run has saved its checkpoint
and recorded "interrupted", :meth:`StopRequests.hand_over` calls submitit's own handler, which
requeues the job; the requeued member continues from the checkpoint.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
        self._handed: dict[int, Any] = {}  # a signal to pass on once the run has stopped, and its earlier handler
        self.hand_over_due = False
        self._deferring = 0  # inside deferred(): a second Ctrl-C waits for the block's end
        self._quit_due: int | None = None

    def handle(self, signum: int, frame: object = None) -> None:
        if signum in self._handed:
            self.hand_over_due = True
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
            if self.on_request is not None:
                self.on_request(signum)
        elif signum == signal.SIGINT and time.monotonic() - self._since >= REPEAT_SECONDS:
            if self._deferring:
                self._quit_due = signum
                return
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A second Ctrl-C inside the block quits at its end, not halfway: drawing a figure imports
        plotnine and matplotlib, and an import cut short leaves modules half made (a KeyError from
        matplotlib's docstrings, not a clean stop)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if not self._deferring and self._quit_due is not None:
                signum, self._quit_due = self._quit_due, None
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

    def hand_over(self) -> None:
        """Call the earlier handler of a handed-over signal that came (submitit: requeue the job and exit)."""
        if not self.hand_over_due:
            return
        self.hand_over_due = False
        for number, handler in self._handed.items():
            signal.signal(number, handler)
            if callable(handler):
                handler(number, None)

    @contextmanager
    def installed(
        self,
        stop_file: Path | None = None,
        on_request: Callable[[int], None] | None = None,
        hand_over: int | None = None,
    ) -> Iterator[StopRequests]:
        """Handle SIGINT and SIGTERM (and ``hand_over``) inside the block; the outermost block starts afresh.

        Nested blocks (a sweep member running inside the `vae sweep` process) share the request.
        """
        outermost = self._depth == 0
        saved = (self.stop_file, self.on_request)
        previous = {}
        if outermost:
            self.signum, self._next_poll, self.hand_over_due, self._quit_due = None, 0.0, False, None
            numbers = (*SIGNALS, hand_over) if hand_over is not None else SIGNALS
            try:
                previous = {number: signal.signal(number, self.handle) for number in numbers}
            except ValueError:  # not the main thread: only the stop file can stop this run
                previous = {}
            self._handed = {hand_over: previous[hand_over]} if hand_over in previous else {}
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
            if outermost:
                self._handed = {}


STOP = StopRequests()
