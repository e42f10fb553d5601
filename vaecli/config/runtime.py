"""Where and how a run executes: the device, torch's thread count, and SLURM's job id."""

from __future__ import annotations

import os
from typing import Any

from vaecli.config.schema import DEVICES
from vaecli.errors import UsageError


def pick_device(name: str, option: str = "device="):
    """The torch device ``name`` asks for; a one-line :class:`UsageError` when this machine lacks it.

    ``option`` is how the user spelled the setting (``device=`` in a config, ``--device `` on the CLI).
    """
    import torch

    if name not in DEVICES:
        raise UsageError(f"{option}{name} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option}cuda asked for, but torch sees no CUDA GPU; use {option}cpu or {option}auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option}mps asked for, but this machine has no MPS backend; use {option}cpu")
    return torch.device(name)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_for(threads: int, launcher: Any | None) -> int:
    """Torch threads so that parallel members together stay within the CPUs they may use.

    ``launcher`` is Hydra's launcher config of the current sweep (None outside Hydra).
    """
    if threads:
        return int(threads)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:
        return max(1, int(slurm))
    cpus = usable_cpus()
    if launcher is None:
        return cpus
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs is not None:  # joblib: n_jobs <= 0 means all CPUs (+1 + n_jobs)
        parallel = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)
        return max(1, cpus // parallel)
    if "cpus_per_task" in launcher and launcher.cpus_per_task:
        return max(1, min(int(launcher.cpus_per_task), cpus))
    return cpus


_LIBC: Any = None


def return_freed_memory() -> None:
    """Give the pages of freed temporaries back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    A long CPU loop that frees and allocates megabyte temporaries in torch's threads leaves them in
    glibc's per-thread heaps: `vae evaluate` at k=1000 over the test set reached 10 GB of resident
    memory that way, with never more than a few MB of live tensors. Trimming now and then bounds it.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
            _LIBC = _LIBC if _LIBC and hasattr(_LIBC, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def preemption_signal() -> int | None:
    """Inside a submitit job: the signal submitit requeues the job on (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    import signal

    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def slurm_job_id() -> str | None:
    """This task's SLURM id as scancel and sacct take it: ``<array job>_<task>`` inside an array."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
