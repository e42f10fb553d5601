"""One writer per folder: an OS lock on a run (or sweep) folder, held while a process works in it.

The lock is ``flock`` on the folder itself, so the kernel releases it when the process ends, however
it ends (a SIGKILL, an out-of-memory kill, a lost SLURM node): a killed run never leaves a stale
lock, and a requeued job takes the lock its dead predecessor held. Taking it writes nothing; the
holder then notes who it is in ``.lock`` (pid, host, command) so a second process is refused with
one line naming the holder, and removes that note when it lets go. A process may take a lock it
already holds (the basic launcher's task inside `vae train`): locks are counted per process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from vaecli.errors import UsageError

LOCK_FILE = ".lock"  # who holds the folder's lock now: written by the holder, removed when it lets go


class FolderBusy(UsageError):
    """Another process works in this folder: one line naming the folder and the process."""


_held: dict[str, list[int]] = {}  # real path -> [file descriptor, times taken by this process]


def acquire(folder: Path, what: str = "run", wait_s: float = 0.0) -> None:
    """Take ``folder``'s lock for this process, or raise :class:`FolderBusy` without touching the folder.

    ``wait_s``: how long to wait for a holder that is about to end (a sweep member run again while
    the stopped sweep's member still writes its last files, a requeued job beside its dying
    predecessor); a command a person typed is refused at once.
    """
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        return
    try:
        descriptor = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise UsageError(f"cannot open the {what} folder {folder}: {error.strerror}") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            os.close(descriptor)
            raise busy(folder, what) from None
    _held[key] = [descriptor, 1]
    note = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv}
    with suppress(OSError):  # a read-only folder: the lock still holds, a refusal just cannot name the holder
        (Path(key) / LOCK_FILE).write_text(json.dumps(note) + "\n")


def busy(folder: Path, what: str) -> FolderBusy:
    return FolderBusy(
        f"the {what} folder {folder} is in use by {describe(holder(folder))}; "
        "wait for it to finish (or stop it) and run this again"
    )


def release(folder: Path) -> None:
    """Let go of a lock this process took (the last of its takes removes the note and the lock)."""
    key = os.path.realpath(folder)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    with suppress(OSError):
        (Path(key) / LOCK_FILE).unlink(missing_ok=True)
    os.close(entry[0])  # closing the descriptor releases the flock


def holds(folder: Path) -> bool:
    return os.path.realpath(folder) in _held


def holder(folder: Path) -> dict[str, Any] | None:
    try:
        note = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def describe(note: dict[str, Any] | None) -> str:
    if not note or "pid" not in note:
        return "another process"
    command = " ".join(str(part) for part in note.get("command", []))[:80]
    where = f" on {note['host']}" if note.get("host") and note["host"] != socket.gethostname() else ""
    return f"process {note['pid']}{where}" + (f" ({command})" if command else "")


class Locked:
    """``with Locked(folder):`` the folder's lock for the block."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder, self.what = folder, what

    def __enter__(self) -> Locked:
        acquire(self.folder, self.what)
        return self

    def __exit__(self, *exc: Any) -> None:
        release(self.folder)
