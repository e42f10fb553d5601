"""Checkpoints round-trip exactly, load as data only, and bad files give one clear error."""

import pytest
import torch
from omegaconf import OmegaConf

from vaecli import checkpoint, latents
from vaecli.model import build_model


def rebuild(run_dir):
    payload = checkpoint.load(run_dir)
    model = build_model(OmegaConf.create(payload["config"]))
    model.load_state_dict(payload["model"])
    return model.eval(), payload


def test_reload_gives_the_same_outputs(trained_run, data_root):
    model, payload = rebuild(trained_run)
    assert payload["step"] == 40 and payload["config"]["latent_size"] == 10
    assert set(payload["final"]) == {"train", "test"}
    again, _ = rebuild(trained_run / "checkpoint.pt")
    x = torch.rand(5, 784)
    assert torch.equal(latents.reconstructions(model, x), latents.reconstructions(again, x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, payload["model"][key])


def test_checkpoint_carries_optimizer_and_rng_state(trained_run):
    payload = checkpoint.load(trained_run)
    assert payload["optimizer"]["state"] and payload["rng"]["torch"].dtype == torch.uint8
    assert payload["config"]["data"]["root"]  # resolved, not an interpolation
    assert "${" not in str(payload["config"])


def test_loading_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)


def test_truncated_and_foreign_files_are_refused(trained_run, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained_run / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="not a vaecli checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(checkpoint.CheckpointError, match="without checkpoint.pt"):
        checkpoint.load(tmp_path)


def test_atomic_save_leaves_old_file_intact_on_failure(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "value": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_save({"value": Unsaveable()}, path)
    assert torch.load(path, weights_only=True)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
