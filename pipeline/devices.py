"""Which torch device a stage runs on: one rule for every stage's ``device`` param."""

from __future__ import annotations

import os
import time

import torch

from pipeline.errors import StageError
from pipeline.parallel import available_cores


def pick_device(setting: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; ``cuda`` is this process's GPU
    (``local_rank`` under torchrun); ``cuda:N``, ``cpu`` and ``mps`` are taken as given."""
    if isinstance(setting, torch.device):
        return setting
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        setting = f"cuda:{local_rank}"
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise StageError(f"device {setting!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"device {setting!r}: no CUDA device here; use auto or cpu")
    return device


def cpu_threads(setting: int | str = "auto", workers: int = 0, load_aware: bool = True) -> int:
    """torch's intra-op threads for a CPU stage (``threads`` params).

    ``auto``: ``OMP_NUM_THREADS`` when the environment sets it (the user's explicit choice,
    which torch's own default honours too); else the cores this process may use, shared
    with its ``workers`` processes, and (``load_aware``) less the cores other jobs keep busy
    now (``busy_cores``). torch's own default, one thread per core, oversubscribes a busy
    machine: on a loaded 2-core machine the face detector ran several times slower with 2
    threads than with 1 (docs/benchmarks.md, bench/faces.py). Training passes
    ``load_aware=False`` so a resumed run uses the thread count of the run it resumes (the
    float reductions, hence the weights, depend on it)."""
    if setting != "auto":
        return int(setting)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = available_cores()
    share = max(1, cores // (workers + 1))
    if load_aware:
        share = min(share, idle_cores(cores, busy_cores()))
    return share


def idle_cores(cores: int, busy: float) -> int:
    """The cores left when other jobs keep ``busy`` of them busy, at least 1."""
    return max(1, cores - int(busy + 0.5))


def use_training_threads(setting: int | str = "auto") -> int:
    """The train stage's threads: ``auto`` is every core, not shared with the loader workers,
    which wait for the step most of the time (bench/threads.py on 2 cores: 2 threads beat 1
    by 1.5-1.7x at 32, 64 and 256 px with 0, 1 or 2 workers). Not load-aware, so that a
    resumed run reduces its floats as the run it resumes did."""
    return use_threads(setting, workers=0, load_aware=False)


def busy_machine_warning(threads: int) -> str | None:
    """One line for the train stage when other jobs keep busy cores its ``auto`` threads
    need. Training's thread count ignores the load (``use_training_threads``), and on a
    2-core machine with one core busy elsewhere 2 threads trained at 2.1 images/s where 1
    made 50.2 (docs/quality.md, CPU defaults): the user should hear it before the run."""
    cores = available_cores()
    busy = busy_cores()
    idle = idle_cores(cores, busy)
    if threads <= 1 or idle >= threads:
        return None
    return (
        f"warning: other jobs keep {busy:.1f} of {cores} cores busy and training runs "
        f"{threads} threads, which can make it many times slower (docs/quality.md, CPU "
        f"defaults); while they run, use -S train.threads={idle}"
    )


def busy_cores(interval_s: float = 0.25) -> float:
    """How many cores other processes keep busy now: the CPU time /proc/stat counts over a
    short interval (Linux), else the 1-minute load average. The load average lags by a
    minute, so a stage DVC starts right after a CPU-bound one saw that finished stage's load
    and ran on 1 thread of an idle 2-core machine (the quick run's evaluate: 5.6 images/s)."""
    try:
        first = _cpu_times()
        time.sleep(interval_s)
        second = _cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    cores = os.cpu_count() or 1
    return max(0.0, (total - idle) / total * cores) if total > 0 else 0.0


def _cpu_times() -> list[int]:
    """The machine's CPU times from /proc/stat's first line (user, nice, system, idle,
    iowait, irq, softirq, steal), in clock ticks."""
    with open("/proc/stat") as handle:
        fields = handle.readline().split()
    return [int(value) for value in fields[1:9]]


def use_threads(setting: int | str = "auto", workers: int = 0, load_aware: bool = True) -> int:
    """Set torch's intra-op threads as ``cpu_threads`` says; return the count, to print it."""
    count = cpu_threads(setting, workers, load_aware)
    torch.set_num_threads(count)
    return count
