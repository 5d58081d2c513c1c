"""Training images/s for loader workers × torch threads on this machine's CPU: the
measurement behind ``train.threads: auto`` (docs/quality.md, CPU defaults).

    python bench/threads.py                     # 32, 64 and 256 px, workers 0-2, threads 1-2
    python bench/threads.py --sizes 32 --workers 0 2 --threads 1 2

Each cell is a fresh ``bench/train.py`` process (lightweight at the quick preset's widths,
batch 8), timed after warm-up steps, one cell at a time so the
cells do not share the cores. The table's last column is the rule's choice for that many
workers (``pipeline.devices.cpu_threads``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.devices import cpu_threads  # noqa: E402

# The quick preset's widths (params.quick.yaml) at every size: the settings a CPU run uses.
QUICK = ["-S", "lightweight.channels=12", "-S", "lightweight.latent_dim=64",
         "-S", "lightweight.attn_res=[]"]  # fmt: skip
# image size -> (batch, timed steps)
SETTINGS = {32: (8, 60), 64: (8, 30), 256: (8, 6)}


def images_per_s(size: int, workers: int, threads: int) -> float:
    batch, steps = SETTINGS[size]
    command = [
        sys.executable, str(REPO / "bench" / "train.py"), "--size", str(size),
        "--batch", str(batch), "--steps", str(steps), "--warmup", "3",
        "--images", "256", "--workers", str(workers), "--threads", str(threads), *QUICK,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"images/s ([\d,.]+)", out).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SETTINGS))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, load average {os.getloadavg()[0]:.2f} at the start")
    header = "size  workers  " + "  ".join(f"{t} thr img/s" for t in args.threads) + "  auto"
    print(header)
    for size in args.sizes:
        for workers in args.workers:
            rates = [images_per_s(size, workers, threads) for threads in args.threads]
            auto = cpu_threads("auto", workers, load_aware=False)
            cells = "  ".join(f"{rate:11,.1f}" for rate in rates)
            print(f"{size:4}  {workers:7}  {cells}  {auto:4}", flush=True)


if __name__ == "__main__":
    main()
