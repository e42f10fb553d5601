"""`vae encode`: a split's posterior means and scales with its labels, in one NPZ numpy and pandas read."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import torch

from tests.conftest import invoke
from vaecli.data.tensors import load_split
from vaecli.runfolder.checkpoint import load_model


def test_encode_writes_the_encoders_codes_and_the_labels(runner, trained_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the shared run folder stays as it was
    trained_run = run
    result = invoke(runner, "encode", "-c", str(trained_run), "--n", "300")
    assert result.exit_code == 0, result.output
    path = trained_run / "codes-test.npz"
    assert result.stdout.strip() == f"wrote {path}"
    codes = np.load(path)
    split = load_split("mnist", data_root, train=False, limit=300)
    model = load_model(trained_run, "cpu").model
    with torch.no_grad():
        q = model.encoder(split.images)  # the same images through the encoder, apart from vae encode
    np.testing.assert_allclose(codes["loc"], q.loc.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(codes["scale"], q.scale.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(codes["label"], split.labels.numpy())
    assert codes["split"][0] == "test" and codes["dataset"][0] == "mnist" and codes["index"][-1] == 299
    table = pd.DataFrame(codes["loc"]).assign(label=codes["label"])
    assert table.shape == (300, model.latent_size + 1)


def test_encode_refuses_bad_options_in_one_line_writing_nothing(runner, trained_run, tmp_path):
    for arguments, says in (
        (["--n", "10001"], "--n 10001 is beyond the test split's 10000 images"),
        (["--split", "valid"], "valid"),
        (["-o", str(tmp_path / "codes.csv")], "must end in .npz"),
        (["--n", "0"], "--n"),
    ):
        result = invoke(runner, "encode", "-c", str(trained_run), *arguments)
        assert result.exit_code == 2, arguments
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


def test_chunked_posterior_of_packed_images_equals_one_pass_and_unpacks_lazily():
    """The one encoding loop (models/encoding.py): chunk by chunk from packed bits, the same codes as
    the encoder on every unpacked image at once; the packed split gives its chunks one at a time."""
    from vaecli.data.packed import PackedImages
    from vaecli.models.conv import ConvVAE
    from vaecli.models.encoding import CPU_CHUNK, posterior

    torch.manual_seed(0)
    model = ConvVAE(4, (1, 32, 32)).eval()
    count = 2 * CPU_CHUNK + 37  # a short last chunk
    bits = np.packbits(np.random.default_rng(0).integers(0, 2, (count, 1024), dtype=np.uint8), axis=1)
    packed = PackedImages(bits, 1024)
    chunks = packed.split(CPU_CHUNK)
    assert not isinstance(chunks, list | tuple)  # a list would hold the whole grid as float rows
    assert next(iter(chunks)).shape == (CPU_CHUNK, 1024)
    loc, scale = posterior(model.encoder, packed, torch.device("cpu"))
    with torch.no_grad():
        q = model.encoder(packed[:])
    torch.testing.assert_close(loc, q.loc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scale, q.scale, rtol=1e-5, atol=1e-5)
    assert loc.shape == (count, 4) and loc.dtype == torch.float32
