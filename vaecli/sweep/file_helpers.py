"""Forked helper processes that write some sweep members' files while the launcher writes the others'.

Used by the batched launcher once a group has trained (:mod:`vaecli.sweep.batched.members`): writing a
member's files is mostly plotnine's work, and nothing else keeps the other CPUs busy then.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# a member's place in the shared claims: free, taken by this process, written by a helper, failed in a helper;
# a helper working on it marks it -(helper number + 1)
FREE, HERE, DONE, FAILED = 0, 1, 2, 3


class FileHelpers:
    """Forked helper processes that write some members' files while this process writes the others'.

    A member's files (checkpoint.pt, three figures) take about half a second, mostly plotnine's,
    and once a group has trained nothing else keeps the other CPUs busy. On Linux, this process
    writes the first member's files (so plotnine is imported and warm in every helper), then
    forks the helpers (its memory shared copy-on-write, one torch thread each, as torch's
    DataLoader workers). This process takes members from the front of the list as it reaches them,
    the helpers from the back, each claiming one at a time, so they share the work whatever each
    member costs. A helper that fails or hangs only costs time: its members' files are then
    written here.
    """

    SECONDS_PER_MEMBER = 30  # a helper that takes longer than this on one member is stopped

    def __init__(self, write: Callable[[int], Any], members: Sequence[int], workers: int):
        self.pids: list[int] = []
        self.claims: Any = None  # a shared array of claims, one per member number; None: no helpers
        self.written_here: dict[int, Any] = {}  # members written before forking, and what write() returned
        members = list(members)
        if workers < 1 or len(members) < 3 or sys.platform != "linux":
            return
        with contextlib.suppress(Exception):  # its error is recorded when this process writes it again
            self.written_here[members[0]] = write(members[0])
        self.claims = multiprocessing.Array("b", max(members) + 1)
        self.claims[members[0]] = FREE if members[0] not in self.written_here else HERE
        for number in range(min(workers, len(members) - 2)):  # never more helpers than members left to share
            self.pids.append(fork_helper(write, members[:0:-1], self.claims, number))

    def written(self, i: int) -> bool:
        """Whether member i's files are written (by a helper, or here before forking); False: write them here.

        Claims member i for this process when no helper has it; waits for a helper that is writing it.
        """
        if i in self.written_here:
            return True
        if self.claims is None:
            return False
        with self.claims.get_lock():
            if self.claims[i] == FREE:
                self.claims[i] = HERE
                return False
        deadline = time.monotonic() + self.SECONDS_PER_MEMBER
        while (state := self.claims[i]) < 0:  # a helper is on it
            helper = self.pids[-state - 1]
            if exited(helper) or time.monotonic() > deadline:
                stop(helper)
                return False
            time.sleep(0.01)
        return state == DONE

    def close(self) -> None:
        """Wait for the helpers (they end once no member is left to claim); a hung one is stopped."""
        for pid in self.pids:
            if not reap(pid, self.SECONDS_PER_MEMBER):
                stop(pid)
        self.pids = []


def fork_helper(write: Callable[[int], object], share: list[int], claims: Any, number: int = 0) -> int:
    """Helper ``number``: writes the members of ``share`` it can claim in ``claims``, one at a time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns about forking with threads
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a helper; the parent writes its share
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch = sys.modules.get("torch")  # not imported by `vae sweep --report`, which draws figures only
        if torch is not None:
            torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
        for i in share:
            if not claim(claims, i, -(number + 1)):
                continue
            try:
                write(i)
            except Exception:
                claims[i] = FAILED  # the parent writes it again, and records the error
            else:
                claims[i] = DONE
        code = 0
    finally:
        os._exit(code)


def claim(claims: Any, i: int, mark: int) -> bool:
    with claims.get_lock():
        if claims[i] != FREE:
            return False
        claims[i] = mark
        return True


def exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # already reaped
        return True
    return bool(done)


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def reap(pid: int, timeout: float) -> bool:
    """Wait for a helper; True when it exited 0 within ``timeout`` seconds (else it is killed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (it exited while this process waited for a member)
            return True
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            stop(pid)
            return False
        time.sleep(0.02)
