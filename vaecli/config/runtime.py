"""Where and how a run executes: the device, torch's thread count, and SLURM's job id."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


PROBE_ROUNDS = 3  # interleaved rounds over the candidates: a burst of load hits each alike
PROBE_SECONDS = 0.05  # timed work per candidate and round (at least PROBE_CALLS calls)
PROBE_CALLS = 3


def thread_candidates(most: int) -> list[int]:
    """1, the powers of two below ``most``, and ``most``: the counts worth timing."""
    return sorted({1, most} | {2**i for i in range(1, max(1, most.bit_length())) if 2**i < most})


def fastest_threads(work: Callable[[], object], most: int) -> tuple[int, dict[int, float]]:
    """The thread count (1 to ``most``) at which ``work`` runs fastest on this machine now, and the
    best seconds per call of each count timed.

    Why: torch's default of every core is 2-3x slower than one thread when another process keeps
    a core busy (benchmarks/thread_load.py), and only on an idle machine do more threads win.
    Timing the real step beats reading the load average, which lags by a minute and cannot say
    whether the busy cores are the ones this process may use. Leaves torch's count as it found it.
    """
    import torch

    if most <= 1:
        return 1, {}
    before = torch.get_num_threads()
    best: dict[int, float] = {}
    try:
        for _ in range(PROBE_ROUNDS):
            for count in thread_candidates(most):
                torch.set_num_threads(count)
                work()  # warm: the pool at this size, the allocator's blocks
                calls, started = 0, time.perf_counter()
                while calls < PROBE_CALLS or time.perf_counter() - started < PROBE_SECONDS:
                    work()
                    calls += 1
                seconds = (time.perf_counter() - started) / calls
                best[count] = min(best.get(count, seconds), seconds)
    finally:
        torch.set_num_threads(before)
    return min(best, key=lambda count: (best[count], -count)), best


def settle_threads(
    probe: Callable[[], Callable[[], object]],
    most: int,
    recorded: int = 0,
    say: Callable[[str], None] | None = None,
) -> int:
    """Set and return torch's thread count: ``recorded`` (the count a run began with: another changes
    the sums' order, and a continued run must equal an uninterrupted one), else the count at which
    the work ``probe()`` builds runs fastest now (:func:`fastest_threads`), said through ``say``."""
    import torch

    chosen = recorded
    if not chosen:
        chosen, best = fastest_threads(probe(), most)
        if best and say is not None:
            say(describe_probe(chosen, best))
    torch.set_num_threads(chosen)
    return chosen


def describe_probe(chosen: int, best: dict[int, float]) -> str:
    timed = ", ".join(f"{count}: {seconds * 1000:.2f} ms" for count, seconds in sorted(best.items()))
    return f"threads=0 chose {chosen} thread(s) by timing the step now ({timed} per step)"


_LIBC: Any = None


def libc() -> Any:
    """glibc through ctypes, or False where there is none (macOS, musl): every caller is then a no-op."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
            _LIBC = _LIBC if _LIBC and hasattr(_LIBC, "malloc_trim") and hasattr(_LIBC, "mallopt") else False
        except OSError:
            _LIBC = False
    return _LIBC


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
REUSED_BUFFER_BYTES = 64 << 20  # activations up to this size come from the heap, not a fresh mmap


def reuse_freed_buffers() -> None:
    """Let glibc hand freed activation buffers back to the next chunk instead of mapping fresh pages.

    Encoding a large dataset chunk by chunk allocates and frees the same few megabyte activations
    thousands of times. By default glibc serves each from a new mmap and unmaps it on free, so every
    chunk page-faults its activations in again: the conv encoder ran at 4,400 images/s that way and
    13,500 with the buffers kept (benchmarks/disentanglement_speed.py). Resident memory grows by at
    most the trim threshold; return_freed_memory still gives everything back on demand.
    """
    found = libc()
    if found:
        found.mallopt(M_MMAP_THRESHOLD, REUSED_BUFFER_BYTES)
        found.mallopt(M_TRIM_THRESHOLD, 4 * REUSED_BUFFER_BYTES)


def return_freed_memory() -> None:
    """Give the pages of freed temporaries back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    A long CPU loop that frees and allocates megabyte temporaries in torch's threads leaves them in
    glibc's per-thread heaps: `vae evaluate` at k=1000 over the test set reached 10 GB of resident
    memory that way, with never more than a few MB of live tensors. Trimming now and then bounds it.
    """
    found = libc()
    if found:
        found.malloc_trim(0)


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
