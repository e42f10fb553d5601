"""Forked helper processes that write some sweep members' files while the launcher writes the others'.

Used by the batched launcher once a group has trained (:mod:`vaecli.stacked_run`): writing a
member's files is mostly plotnine's work, and nothing else keeps the other CPUs busy then.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable

import torch


class FileHelpers:
    """Forked helper processes that write some members' files while this process writes the others'.

    A member's files (checkpoint.pt, three figures) take a fraction of a second, mostly plotnine's,
    and once a group has trained nothing else keeps the other CPUs busy. On Linux, helpers forked
    from this process (its memory shared copy-on-write, one torch thread each, as torch's DataLoader
    workers) write a share of the members each. A helper that fails or hangs only costs time: its
    members' files are then written here.
    """

    SECONDS_PER_MEMBER = 30  # a helper that takes longer than this per member (plus a minute) is stopped

    def __init__(self, write: Callable[[int], object], members: list[int], workers: int):
        self.pids: dict[int, int] = {}  # member -> its helper's pid
        self.wrote: dict[int, bool] = {}  # helper pid -> it wrote all of its members' files
        self.sizes: dict[int, int] = {}  # helper pid -> its members
        if workers < 1 or len(members) < 2 or sys.platform != "linux":
            return
        for share in (members[k :: workers + 1] for k in range(1, workers + 1)):
            if share:
                pid = fork_helper(write, share)
                self.pids.update(dict.fromkeys(share, pid))
                self.sizes[pid] = len(share)

    def order(self, members: Iterable[int]) -> list[int]:
        members = list(members)
        return [i for i in members if i not in self.pids] + [i for i in members if i in self.pids]

    def written(self, i: int) -> bool:
        """Whether a helper wrote member i's files (False: write them here)."""
        pid = self.pids.pop(i, None)
        if pid is None:
            return False
        if pid not in self.wrote:
            self.wrote[pid] = reap(pid, 60 + self.SECONDS_PER_MEMBER * self.sizes[pid])
        return self.wrote[pid]


def fork_helper(write: Callable[[int], object], share: list[int]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns about forking with threads
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a helper; the parent writes its share
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
        for i in share:
            write(i)
        code = 0
    finally:
        os._exit(code)


def reap(pid: int, timeout: float) -> bool:
    """Wait for a helper; True when it exited 0 within ``timeout`` seconds (else it is killed)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.02)
