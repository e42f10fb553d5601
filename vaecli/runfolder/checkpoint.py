"""Checkpoints as plain data: written atomically, loaded with ``weights_only=True``, rebuilt into models.

A checkpoint carries its resolved config, so any command can rebuild the model from it alone,
on any device: tensors are saved on the CPU and loaded onto the CPU first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vaecli.atomic import atomic_write
from vaecli.config.runtime import pick_device
from vaecli.data.registry import DATASETS, MNIST_SHAPE
from vaecli.data.sources import DataUnavailableError
from vaecli.data.tensors import Split, load_split
from vaecli.errors import RunError, UsageError, first_line
from vaecli.models.encoding import posterior
from vaecli.models.mlp import VAE
from vaecli.models.registry import MODELS, build_model
from vaecli.runfolder.files import CHECKPOINT, METRICS_CSV

FORMAT = "vaecli-checkpoint"
VERSION = (
    2  # 2 adds the training position (resume); the newest format this vaecli writes and reads; older ones it reads too
)


class CheckpointError(UsageError):
    """The path is not a usable checkpoint; the message says why and what to do."""


def atomic_save(payload: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: never a half-written checkpoint."""
    atomic_write(path, lambda handle: torch.save(payload, handle))


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point tensor in the model's state is finite (checked before saving it)."""
    return all(bool(tensor.isfinite().all()) for tensor in model.state_dict().values() if tensor.is_floating_point())


class NonFiniteWeights(RunError):
    """Weights with NaN or inf are never written over a checkpoint: the last good one is kept."""


def to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(to_cpu(value) for value in state)
    return state


def save(
    path: Path,
    *,
    config: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    rng: dict[str, Any],
    final: dict | None = None,
    training: dict | None = None,
    objective: dict | None = None,
) -> None:
    """Write a checkpoint; ``training`` (the loop's position, from :mod:`vaecli.run.loop`) lets a run continue."""
    if not weights_are_finite(model):
        raise NonFiniteWeights(f"not writing {path}: the weights hold NaN or inf (the last good checkpoint is kept)")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "step": step,
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "rng": to_cpu(rng),
        "final": final or {},
        "training": to_cpu(training),
    }
    if objective:  # what an objective keeps between steps (FactorVAE's discriminator and its Adam)
        payload["objective"] = to_cpu(objective)
    atomic_save(payload, path)


def training_state(payload: dict[str, Any], file: Path) -> dict[str, Any]:
    """What the loop needs to continue from a loaded checkpoint, or a one-line refusal."""
    state = payload.get("training")
    if not isinstance(state, dict) or not isinstance(payload.get("optimizer"), dict):
        raise CheckpointError(f"{file} holds no training state to continue from (an older vaecli wrote it)")
    return state


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder that holds one."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / CHECKPOINT
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without {CHECKPOINT}; pass a run folder made by `vae train`")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a checkpoint.pt or a run folder")
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load on the CPU (whatever device wrote it) and check that it is ours."""
    file = resolve(path)
    payload = read_payload(file)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a vaecli checkpoint; pass the checkpoint.pt that `vae train` wrote")
    check_version(payload.get("version"), file)
    return payload


def read_payload(file: Path) -> Any:
    """torch.load of a checkpoint as data (weights_only), or a one-line reason in our words, no warning leaking."""
    import pickle
    import warnings
    import zipfile

    advice = "pass the checkpoint.pt that `vae train` wrote"
    if not zipfile.is_zipfile(file):
        reason = "not a zip archive as torch.save writes one: truncated, or not a checkpoint"
        raise CheckpointError(f"{file} is not a readable checkpoint ({reason}); {advice}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors and plain data, and a checkpoint is data, never code"
    except Exception as error:  # a damaged archive: torch's own words are many lines of internals
        reason = f"its archive is damaged ({type(error).__name__})"
    raise CheckpointError(f"{file} is not a readable checkpoint ({reason}); {advice}")


def check_version(version: Any, file: Path) -> None:
    """Formats 1..VERSION load; a newer one (or none) is refused naming both versions."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{file} has no valid checkpoint format version ({version!r}); it was not written by vaecli"
        )
    if version > VERSION:
        raise CheckpointError(
            f"{file}: checkpoint format version {version} is newer than this vaecli reads ({VERSION}): upgrade vaecli"
        )


@dataclass
class Loaded:
    """A trained run as a notebook sees it (``vaecli.load_run``): its model, config, data and files.

    The picture commands and `vae evaluate` use the same object, so what a notebook computes from
    it is what the commands draw and measure.
    """

    model: VAE
    config: Any  # OmegaConf DictConfig (attribute access, as build_model expects)
    file: Path

    @property
    def run_dir(self) -> Path:
        return self.file.parent

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.distributions.Normal:
        """q(z|x) of each image (rows of pixels in [0, 1]): its means ``.loc`` and scales ``.scale``, on the CPU."""
        loc, scale = posterior(self.model.encoder, images, self.device)
        return torch.distributions.Normal(loc, scale, validate_args=False)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image of each code (rows of pixels in [0, 1]), on the CPU."""
        return self.model.decoder(z.to(self.device)).mean.cpu()

    def metrics(self):
        """metrics.csv as a pandas DataFrame: one row per logged step and split."""
        import pandas as pd

        return pd.read_csv(self.run_dir / METRICS_CSV)

    def dataset(self, split: str, count: int | None = None, data_root: str | None = None) -> Split:
        """The first ``count`` grey-level images of the checkpoint's own dataset (its ``data.root`` unless given)."""
        name = str(self.config.data.name)
        if name not in DATASETS:
            raise UsageError(f"{self.file} was trained on unknown dataset {name!r}")
        root = data_root or str(self.config.data.root)
        try:
            data = load_split(name, root, train=split == "train", limit=count, options=self.config.data)
        except DataUnavailableError as error:
            raise RunError(f"{first_line(error)}; or pass --data-root") from None
        shape = tuple(getattr(self.model, "image_shape", MNIST_SHAPE))
        if data.images.shape[-1] != math.prod(shape):
            raise UsageError(
                f"{self.file} was trained on {'x'.join(map(str, shape))} images, but its data ({name}) now gives "
                f"{data.images.shape[-1]} values per image: point data at the images it was trained on"
            )
        return data


def load_model(path: str | Path, device: str = "auto") -> Loaded:
    """Rebuild the model a checkpoint (or run folder) describes, load its weights, move it to ``device``."""
    target = pick_device(device, option="--device ")
    file = resolve(path)
    payload = load(file)
    config = stored_config(payload, file)
    model = rebuild(config, file)
    check_fit(model, payload.get("model"), config, file)
    model.load_state_dict(payload["model"])
    return Loaded(model.to(target).eval(), config, file)


def stored_config(payload: dict[str, Any], file: Path) -> Any:
    """The checkpoint's config; one written before a key existed gets that key's default (config.schema.LATER_KEYS)."""
    from vaecli.config.schema import with_later_keys

    config = payload.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds no config; pass a checkpoint.pt that `vae train` wrote")
    config = with_later_keys(config)
    if isinstance(config.get("model"), dict | DictConfig):
        config.model = MODELS.with_defaults(config.model)
    if isinstance(config.get("objective"), dict | DictConfig):  # warm-up, cycles, free bits: added later
        from vaecli.objectives.registry import OBJECTIVES

        config.objective = OBJECTIVES.with_defaults(config.objective)
    return config


def rebuild(config: Any, file: Path) -> VAE:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return build_model(config)
    except (OmegaConfBaseException, KeyError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        reason = first_line(error) or type(error).__name__
        raise CheckpointError(f"{file}: its config cannot rebuild a model ({reason})") from None


def describe_shape(config: Any) -> str:
    sizes = config.model.get("hidden_sizes")  # model=mlp's; another model names itself
    shape = f"model.hidden_sizes={list(sizes)}" if sizes is not None else f"model={config.model.get('name')}"
    return f"latent_size={config.latent_size}, {shape}"


def check_fit(model: VAE, state: Any, config: Any, file: Path) -> None:
    """Name the first tensor that does not fit, instead of torch's many-line error."""
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{file} holds no model weights; pass a checkpoint.pt that `vae train` wrote")
    expected = model.state_dict()
    problems = [f"{key} is missing" for key in expected if key not in state]
    problems += [
        f"{key} has shape {list(state[key].shape)} where the model needs {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{file}: weights do not match the model its config describes ({describe_shape(config)}): "
            f"{problems[0]}{more}"
        )
    extra = [key for key in state if key not in expected]
    if extra:
        raise CheckpointError(
            f"{file} has tensors the model does not: {', '.join(extra)}; "
            "was it written by a newer vaecli or changed by hand?"
        )
