"""``vae evaluate --disentanglement``: encode a run's factor grid once, then every metric on those codes.

Every image of the grid is encoded exactly once (posterior means and scales, chunk by chunk from
its packed bits); the FactorVAE and beta-VAE scores, which hold one factor fixed over batches of
images, index those codes instead of encoding about 3 million images. Results, with every
setting and each metric's time, go to ``disentanglement.json`` in the run folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecli.atomic import atomic_write_bytes
from vaecli.data.registry import DATASETS
from vaecli.errors import UsageError
from vaecli.measure.disentanglement.grid import CODES, GridCodes

RESULT_FILE = "disentanglement.json"
ENCODE_CHUNK = 4096  # images unpacked and encoded at once


def factor_grid(loaded: Any, data_root: str | None) -> tuple[Any, Any]:
    """The run's dataset and its full factor grid, or a one-line usage error for data without known factors."""
    name = str(loaded.config.data.name)
    dataset = DATASETS.entry(name)
    if not hasattr(dataset, "grid"):
        raise UsageError(
            f"--disentanglement needs data with known factors (data=dsprites); {loaded.file} was trained on data={name}"
        )
    root = Path(data_root or str(loaded.config.data.root))
    return dataset, dataset.grid(root, loaded.config.data)


@torch.inference_mode()
def encode_grid(model: torch.nn.Module, packed: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and scales (N, d) of every packed image, one chunk unpacked at a time."""
    from vaecli.data.packed import PackedImages

    images = PackedImages(packed, int(packed.shape[1]) * 8, device)
    parts = [model.encoder(chunk) for chunk in images.split(ENCODE_CHUNK)]
    loc = torch.cat([q.loc.cpu() for q in parts]).numpy()
    scale = torch.cat([q.scale.cpu() for q in parts]).numpy()
    return loc, scale


def run_metrics(codes: GridCodes, seed: int, fast_dci: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Every metric on ``codes``, each with its own generator (seeded from ``seed``) and its time."""
    from vaecli.measure.disentanglement import interventions, metrics

    without_shape = [name for name in codes.names if name != "shape"]
    plan: list[tuple[str, Callable[..., dict]]] = [
        ("mig", metrics.mig),
        ("chen_mig", lambda c, rng: metrics.chen_mig(c, rng, factors=without_shape)),
        ("dci", lambda c, rng: metrics.dci(c, rng, learner="fast" if fast_dci else "gbt")),
        ("sap", metrics.sap),
        ("modularity_explicitness", metrics.modularity_explicitness),
        ("factor_vae_score", interventions.factor_vae_score),
        ("beta_vae_score", interventions.beta_vae_score),
    ]
    found = {}
    for number, (name, metric) in enumerate(plan):
        started = time.perf_counter()
        result = metric(codes, np.random.default_rng(seed + number))
        result["seconds"] = round(time.perf_counter() - started, 2)
        say(f"{name}: {result['seconds']:.1f} s")
        found[name] = jsonable(result)
    return found


def jsonable(value: Any) -> Any:
    """numpy values and arrays as plain JSON numbers and lists."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def evaluate_disentanglement(
    loaded: Any, data_root: str | None, seed: int, fast_dci: bool, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """Encode the run's grid, compute every metric, write disentanglement.json; its path and content."""
    import json

    dataset, packed = factor_grid(loaded, data_root)
    loaded.model.eval()
    started = time.perf_counter()
    loc, scale = encode_grid(loaded.model, packed, loaded.device)
    encode_seconds = time.perf_counter() - started
    say(f"encoded {len(loc)} images in {encode_seconds:.1f} s")
    root = Path(data_root or str(loaded.config.data.root))
    codes = GridCodes(loc, scale, tuple(dataset.factor_sizes(root, loaded.config.data)), tuple(dataset.names))
    result = {
        "data": dataset.where(Path(data_root or str(loaded.config.data.root)), loaded.config.data),
        "checkpoint": str(loaded.file),
        "codes": CODES,
        "images_encoded": int(len(loc)),
        "encode_seconds": round(encode_seconds, 2),
        "seed": seed,
        "metrics": run_metrics(codes, seed, fast_dci, say),
    }
    path = loaded.run_dir / RESULT_FILE
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
    return path, result
