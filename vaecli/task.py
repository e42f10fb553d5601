"""One run, as Hydra calls it: train, then write the checkpoint, figures and result.json.

The same function serves ``vae train`` (Hydra's run mode) and every member of ``vae sweep``
(multirun). In a sweep a member never raises: it records its failure in result.json, so the
other members go on and aggregation sees every member's status, whatever the launcher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vaecli import config as config_module

log = logging.getLogger("vaecli")
RESULT_NAME = "result.json"

config_module.register()


def write_result(out_dir: Path, **fields: Any) -> None:
    path = out_dir / RESULT_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(fields, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def read_result(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_for(cfg: DictConfig) -> int:
    """Torch threads so that parallel members together stay within the CPUs they may use."""
    if cfg.threads:
        return int(cfg.threads)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:
        return max(1, int(slurm))
    cpus = usable_cpus()
    if not HydraConfig.initialized():
        return cpus
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs is not None:  # joblib: n_jobs <= 0 means all CPUs (+1 + n_jobs)
        parallel = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)
        return max(1, cpus // parallel)
    if "cpus_per_task" in launcher and launcher.cpus_per_task:
        return max(1, min(int(launcher.cpus_per_task), cpus))
    return cpus


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def slurm_job_id() -> str | None:
    """This task's SLURM id as scancel and sacct take it: ``<array job>_<task>`` inside an array."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")


def config_hash(cfg: DictConfig) -> str:
    """What decides a run's results: the resolved config without where and how fast it runs."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for section, key in ((None, "device"), (None, "threads"), ("data", "root"), ("train", "progress")):
        (container[section] if section else container).pop(key, None)  # type: ignore[index, union-attr]
    return hashlib.sha256(json.dumps(container, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function (kept undecorated so launchers can pickle it by name)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    sweeping, fingerprint = in_sweep(), config_hash(cfg)
    if sweeping:
        done = read_result(out_dir)
        if done and done.get("status") == "ok" and done.get("config_hash") == fingerprint:
            log.info("already completed with this config; skipped")
            return done
    started = time.time()
    where = {"slurm_job_id": slurm_job_id(), "host": os.uname().nodename, "pid": os.getpid()}
    write_result(out_dir, status="running", started=started, config_hash=fingerprint, **where)
    try:
        from vaecli.pipeline import train_and_save

        result = train_and_save(cfg, out_dir, threads=threads_for(cfg), interactive=not sweeping)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        elapsed = round(time.time() - started, 3)
        write_result(
            out_dir,
            status="failed",
            error=message,
            seconds=elapsed,
            config_hash=fingerprint,
            **where,
            traceback=traceback.format_exc(),
        )
        log.error("run failed: %s", message)
        if sweeping and isinstance(error, Exception):
            return {"status": "failed", "error": message}
        raise
    elapsed = round(time.time() - started, 3)
    write_result(out_dir, status="ok", seconds=elapsed, config_hash=fingerprint, **where, **result)
    return {"status": "ok", **result}


main = hydra.main(config_path="pkg://vaecli.conf", config_name="config", version_base="1.3")(run)
