"""StyleGAN2-ADA training throughput on the CPU, ours against NVlabs stylegan2-ada-pytorch on
the same settings (issue 23: at least 1.0× NVlabs'): their networks, loss and augment pipe
driven as their training_loop.py drives them, beside our engine's step, in one process, the
same thread count, one after the other (``--rounds`` alternate them against load drift).

    python bench/gpu/prepare.py      # or only its NVlabs part: .peers/stylegan2-ada-pytorch
    python bench/stylegan2_cpu.py                       # 64 px, batch 8, 16 steps
    python bench/stylegan2_cpu.py --channel-base 4096 --dims 128

The steps are a multiple of 16 so that both lazy regularisers (R1 every 16, path length
every 4) are counted at their share. The `auto` config (a 2-layer mapping, R1 gamma by
NVlabs' rule), ADA on (bgc, p from 0), fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peers import gpu_bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--channel-base", type=int, default=1024)
    parser.add_argument("--dims", type=int, default=64, help="z and w (both impls)")
    parser.add_argument("--rounds", type=int, default=2, help="ours, NVlabs, ours, NVlabs…")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", type=int, default=0, help="also profile N steps of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = gpu_bench()
    if not (bench.NVLABS / "training" / "networks.py").is_file():
        sys.exit(f"{bench.NVLABS} is absent: python bench/gpu/prepare.py fills it")
    sys.path.insert(0, str(bench.NVLABS))
    setup = bench.Setup(dry_run=True)  # the CPU, and the dry run's small-network switches
    setup.size, setup.warmup, setup.repeats = args.size, 2, 1
    setup.channel_base, setup.dims = args.channel_base, args.dims
    ours = {
        "stylegan2.config": "auto",
        "stylegan2.map_layers": None,  # auto: 2, as NVlabs' auto
        "stylegan2.channel_base": args.channel_base,
        "stylegan2.latent_dim": args.dims,
        "stylegan2.w_dim": args.dims,
    }
    name = f"stylegan2 cpu {args.size}px batch {args.batch} base {args.channel_base}"
    with tempfile.TemporaryDirectory(prefix="sg2-cpu-") as tmp:
        results = Path(tmp) / "results"
        for round_ in range(args.rounds):
            work = Path(tmp) / f"ours-{round_}"
            work.mkdir()
            profile = args.profile if round_ == 0 else 0
            bench.time_ours(setup, results, name, work, "stylegan2", args.batch, args.steps,
                            profile=profile, **ours)  # fmt: skip
            bench.time_nvlabs(setup, results, name, "auto", args.batch, args.steps, {})
        records = [json.loads(line) for line in (results / "records.jsonl").open()]
        if args.profile:
            print((results / "profile.txt").read_text())
    rates = {impl: [r["images_per_s"] for r in records if r["impl"] == impl]
             for impl in ("ours", "nvlabs")}  # fmt: skip
    print(f"{name}, {args.steps} steps a round, {torch.get_num_threads()} threads")
    for impl, values in rates.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{impl:7} images/s {statistics.median(values):7.2f}  (rounds: {shown})")
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["nvlabs"])
    print(f"ours / NVlabs: {ratio:.2f}x")


if __name__ == "__main__":
    main()
