"""The run path reads in one sitting: `vae train` reaches its loop in 5 nested calls of ours, loss.png in 8."""

from __future__ import annotations

import sys
from pathlib import Path

import vaecli
from tests.conftest import invoke

PACKAGE = str(Path(vaecli.__file__).parent)


def our_depth(frame) -> int:
    """How many frames on the stack, this one included, run vaecli's own code."""
    depth = 0
    while frame is not None:
        depth += frame.f_code.co_filename.startswith(PACKAGE)
        frame = frame.f_back
    return depth


def test_train_reaches_its_loop_and_loss_png_in_few_calls(runner, tiny, tmp_path):
    seen: dict[str, int] = {}

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        code = frame.f_code
        if code.co_name == "run" and code.co_filename.endswith("run/loop.py"):
            seen.setdefault("loop", our_depth(frame))
        if code.co_name == "save_plot" and Path(str(frame.f_locals.get("path", ""))).name == "loss.png":
            seen.setdefault("loss.png", our_depth(frame))

    sys.setprofile(profile)
    try:
        result = invoke(runner, "train", *tiny, f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        sys.setprofile(None)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "loss.png").is_file()
    assert seen["loop"] <= 5, seen
    assert seen["loss.png"] <= 8, seen
