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
from vaecli.models.encoding import posterior
from vaecli.runfolder.files import DISENTANGLEMENT_JSON


def factor_grid(config: Any, data_root: str | None, source: str) -> tuple[Any, Path]:
    """The run's dataset and its data root, or a one-line usage error for data without known factors."""
    name = str(config.data.name)
    dataset = DATASETS.entry(name)
    if not hasattr(dataset, "grid"):
        raise UsageError(
            f"--disentanglement needs data with known factors (data=dsprites); {source} was trained on data={name}"
        )
    return dataset, Path(data_root or str(config.data.root))


def encode_grid(model: torch.nn.Module, packed: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and scales (N, d) of every packed image, one chunk unpacked at a time."""
    from vaecli.data.packed import PackedImages

    loc, scale = posterior(model.encoder, PackedImages(packed, int(packed.shape[1]) * 8, device), device)
    return loc.numpy(), scale.numpy()


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
    model: torch.nn.Module,
    config: Any,
    run_dir: Path,
    source: str,
    options: tuple[str | None, int, bool],
    say: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """Encode the run's grid, compute every metric, write disentanglement.json; its path and content.

    ``source`` names the checkpoint (or run) in the file; ``options`` are (data root, seed, fast DCI).
    """
    import json

    data_root, seed, fast_dci = options
    dataset, root = factor_grid(config, data_root, source)
    packed = dataset.grid(root, config.data)
    model.eval()
    started = time.perf_counter()
    loc, scale = encode_grid(model, packed, next(model.parameters()).device)
    encode_seconds = time.perf_counter() - started
    say(f"encoded {len(loc)} images in {encode_seconds:.1f} s")
    codes = GridCodes(loc, scale, tuple(dataset.factor_sizes(root, config.data)), tuple(dataset.names))
    result = {
        "data": dataset.where(root, config.data),
        "checkpoint": source,
        "codes": CODES,
        "images_encoded": int(len(loc)),
        "encode_seconds": round(encode_seconds, 2),
        "seed": seed,
        "metrics": run_metrics(codes, seed, fast_dci, say),
    }
    path = run_dir / DISENTANGLEMENT_JSON
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
    return path, result


def check_disentanglement(config: Any) -> None:
    """``eval.disentanglement=true`` on data without known factors: refused before any folder exists."""
    if config.eval.get("disentanglement"):
        factor_grid(config, None, "this run")


def disentanglement_after_training(config: Any, model: torch.nn.Module, out_dir: Path) -> None:
    """``eval.disentanglement=true``: disentanglement.json beside the run's other files at the end of training."""
    if config.eval.get("disentanglement"):
        options = (None, int(config.seed), bool(config.eval.get("fast_dci")))
        evaluate_disentanglement(model, config, out_dir, str(out_dir), options, lambda line: None)
