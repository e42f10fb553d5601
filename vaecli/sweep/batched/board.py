"""groups.json in a batched sweep's folder: its groups, their state and step, for `vae sweep`'s progress line."""

from __future__ import annotations

import time
from pathlib import Path

from vaecli.runfolder import files as run_folder

PROGRESS_SECONDS = 1.0  # how often groups.json says how far the running group has got


class GroupBoard:
    """groups.json in the sweep folder: the groups, their state and step, for `vae sweep`'s progress line."""

    def __init__(self, sweep_dir: Path, groups: list[list[str]]):
        self.sweep_dir = sweep_dir
        self.groups = [{"members": members, "state": "waiting", "step": 0, "steps": None} for members in groups]
        self.written = 0.0
        self.write()

    def write(self) -> None:
        run_folder.write_groups(self.sweep_dir, self.groups)
        self.written = time.perf_counter()

    def state(self, number: int, state: str) -> None:
        self.groups[number]["state"] = state
        self.write()

    def step(self, number: int, step: int, steps: int) -> None:
        self.groups[number].update(step=step, steps=steps)
        if time.perf_counter() - self.written >= PROGRESS_SECONDS:
            self.write()
