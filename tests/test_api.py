"""The notebook API, used as a notebook user would: a fresh Python process that imports vaecli."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import vaecli
from vaecli.errors import UsageError

NOTEBOOK = textwrap.dedent(
    """
    import json, sys
    import torch
    import vaecli

    overrides, folder = sys.argv[1:-1], sys.argv[-1]
    run_dir = vaecli.train(*overrides, f"hydra.run.dir={folder}")
    run = vaecli.load_run(run_dir, device="cpu")
    test = run.dataset("test", 16)
    q = run.encode(test.images)
    means = run.decode(q.loc)
    report = vaecli.evaluate(run, k=4, n=16).to_json()
    # the same figures by hand: the decoder mean of the posterior mean
    with torch.no_grad():
        by_hand = torch.sigmoid(run.model.decoder(run.model.encoder(test.images).loc).logits)
    print(json.dumps({
        "run_dir": str(run_dir),
        "loc": list(q.loc.shape), "scale_positive": bool((q.scale > 0).all()),
        "means": list(means.shape), "in_unit_range": bool(((means >= 0) & (means <= 1)).all()),
        "same_as_by_hand": bool(torch.allclose(means, by_hand)),
        "last_step": int(run.metrics().step.max()),
        "bound_images": report["bound"]["images"], "k": report["setup"]["k"],
        "isinstance_run": isinstance(run, vaecli.Run),
    }))
    """
)


def test_a_notebook_trains_loads_encodes_decodes_and_evaluates(tiny, tmp_path):
    folder = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK, *tiny, str(folder)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["run_dir"] == str(folder) and (folder / "checkpoint.pt").is_file()
    assert seen["loc"] == [16, 10] and seen["scale_positive"]
    assert seen["means"] == [16, 784] and seen["in_unit_range"] and seen["same_as_by_hand"]
    assert seen["last_step"] == 8 and seen["bound_images"] == 16 and seen["k"] == 4
    assert seen["isinstance_run"]
    assert not (folder / "evaluation.json").exists()  # the API's evaluate writes nothing


def test_the_api_raises_what_the_command_line_prints(tiny, tmp_path):
    with pytest.raises(UsageError, match="beta=-1.0 is not allowed"):
        vaecli.train(*tiny, "beta=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()
    with pytest.raises(AttributeError):
        vaecli.no_such_name  # noqa: B018


def test_importing_vaecli_loads_neither_torch_nor_hydra():
    code = "import sys, vaecli; print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"
