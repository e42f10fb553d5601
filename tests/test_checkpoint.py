"""Checkpoints round-trip exactly, load as data only, and bad files give one clear error."""

import pytest
import torch
from omegaconf import OmegaConf

from vaecli.measure import latents
from vaecli.models.registry import build_model
from vaecli.runfolder import checkpoint


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


def test_format_versions_up_to_this_one_load_and_newer_are_refused(trained_run, tmp_path, monkeypatch):
    payload = checkpoint.load(trained_run)
    monkeypatch.setattr(checkpoint, "VERSION", 3)  # as after two format changes
    for version, readable in ((1, True), (3, True), (4, False), (0, False), ("2", False), (None, False)):
        payload["version"] = version
        torch.save(payload, tmp_path / "c.pt")
        if readable:
            assert checkpoint.load(tmp_path / "c.pt")["version"] == version
        else:
            with pytest.raises(checkpoint.CheckpointError, match="is newer than this vaecli reads \\(3\\)|no valid"):
                checkpoint.load(tmp_path / "c.pt")


def test_non_finite_weights_never_replace_a_checkpoint(trained_run, tmp_path):
    loaded = checkpoint.load_model(trained_run, "cpu")
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((trained_run / "checkpoint.pt").read_bytes())
    before = path.read_bytes()
    assert checkpoint.weights_are_finite(loaded.model)
    with torch.no_grad():
        next(loaded.model.decoder.parameters())[0, 0] = float("nan")
    assert not checkpoint.weights_are_finite(loaded.model)
    with pytest.raises(checkpoint.NonFiniteWeights, match="last good checkpoint is kept"):
        checkpoint.save(path, config={}, model=loaded.model, optimizer=None, step=41, rng={})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_finiteness_check_sees_nan_and_both_infinities_but_not_large_values(trained_run):
    model = checkpoint.load_model(trained_run, "cpu").model
    weight = next(model.encoder.parameters())
    for value, finite in ((3e38, True), (float("inf"), False), (-float("inf"), False), (float("nan"), False)):
        with torch.no_grad():
            weight[0, 0] = value
        assert checkpoint.weights_are_finite(model) is finite, value
