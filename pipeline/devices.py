"""Which torch device a stage runs on: one rule for every stage's ``device`` param."""

from __future__ import annotations

import os

import torch

from pipeline.errors import StageError


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
    with its ``workers`` processes, and
    (``load_aware``) less the cores other jobs keep busy (the 1-minute load average). torch's
    own default, one thread per core, oversubscribes a busy machine: on a loaded 2-core
    machine the face detector ran several times slower with 2 threads than with 1 (README,
    bench/faces.py). Training passes ``load_aware=False`` so a resumed run uses the thread
    count of the run it resumes (the float reductions, hence the weights, depend on it)."""
    if setting != "auto":
        return int(setting)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    share = max(1, cores // (workers + 1))
    if load_aware and hasattr(os, "getloadavg"):
        idle = cores - int(os.getloadavg()[0] + 0.5)
        share = min(share, max(1, idle))
    return share


def use_threads(setting: int | str = "auto", workers: int = 0, load_aware: bool = True) -> int:
    """Set torch's intra-op threads as ``cpu_threads`` says; return the count, to print it."""
    count = cpu_threads(setting, workers, load_aware)
    torch.set_num_threads(count)
    return count
