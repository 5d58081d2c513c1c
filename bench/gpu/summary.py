"""The GPU check's table and ``gpu.json``, from the records bench/gpu/bench.py appended
(no torch import: run.sh calls it last, inside its time budget).

    python bench/gpu/summary.py --results DIR --out OUT/gpu.json [--strict]

``--strict`` (the dry run) exits non-zero when a benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summary(results: Path, out: Path, strict: bool = False) -> None:
    records = []
    path = results / "records.jsonl"
    if path.is_file():
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
    env_file = results / "environment.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": env, "records": records}, indent=2) + "\n")
    tmp.replace(out)
    print(f"\ncommit {env.get('commit')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
          f"{env.get('device')}")  # fmt: skip
    print(f"{'benchmark':58s} {'impl':18s} {'images/s':>10s} {'s/kimg':>8s} {'peak GiB':>8s}")
    for r in records:
        if r.get("status") != "ok":
            print(f"{r['bench'][:58]:58s} {r['impl']:18s} {r['status']}: {r.get('reason', '')}")
            continue
        if "fid" in r:  # the quality race: FID at a checkpoint (or the real-vs-real floor)
            where = f"ckpt {r['checkpoint']}, {r['seconds']:.0f} s, {r['kimg']:.1f} kimg" if (
                "checkpoint" in r) else r.get("note", "")  # fmt: skip
            print(f"{r['bench'][:58]:58s} {r['impl'][:18]:18s} FID {r['fid']:6.1f}  {where}")
            continue
        if "seconds" in r or "build_s" in r:
            seconds = r.get("seconds", r.get("build_s"))
            print(f"{r['bench'][:58]:58s} {r['impl']:18s} {seconds:>10.1f} s")
            continue
        kimg = f"{r['s_per_kimg']:8.2f}" if "s_per_kimg" in r else " " * 8
        peak = f"{r['peak_gib']:8.2f}" if r.get("peak_gib") is not None else " " * 8
        label = r["impl"] + (f" {r['precision']}" if "precision" in r else "")
        print(f"{r['bench'][:58]:58s} {label[:18]:18s} {r['images_per_s']:10.1f} {kimg} {peak}")
    for line in [*ratios(records), *fid_ratios(records)]:
        print(line + (" (CPU dry run, narrow networks: not a comparison)" if env.get(
            "device") == "cpu" else ""))  # fmt: skip
    print(f"written: {out}")
    failed = [r for r in records if r.get("status") == "failed"]
    if strict and failed:
        sys.exit(f"{len(failed)} benchmark(s) failed (see above)")


def ratios(records: list[dict]) -> list[str]:
    """Our best images/s over the peer's, per benchmark that has both (the issue's goals:
    ≥ 2× lightweight-gan, ≥ 1.5× NVlabs)."""
    lines = []
    benches = dict.fromkeys(r["bench"] for r in records)
    for bench in benches:
        done = [r for r in records if r["bench"] == bench and r.get("status") == "ok"]
        ours = [r["images_per_s"] for r in done if r["impl"] == "ours" and "images_per_s" in r]
        peers = [r for r in done if r["impl"] != "ours" and "images_per_s" in r]
        for peer in peers:
            if ours:
                ratio = max(ours) / peer["images_per_s"]
                lines.append(f"{bench}: ours / {peer['impl']} = {ratio:.2f}×")
    return lines


def fid_ratios(records: list[dict]) -> list[str]:
    """Our FID over the peer's at each wall-clock checkpoint of the quality race (the
    issue's goal: ≤ 0.8 of lightweight-gan's)."""
    done = [r for r in records if r.get("status") == "ok" and "checkpoint" in r]
    ours = {r["checkpoint"]: r["fid"] for r in done if r["impl"].startswith("ours")}
    lines = []
    for network in sorted({r["impl"] for r in done if not r["impl"].startswith("ours")}):
        peer = {r["checkpoint"]: r["fid"] for r in done if r["impl"] == network}
        pairs = [f"{ours[k] / peer[k]:.2f}" for k in sorted(ours) if k and k in peer]
        if pairs:
            lines.append(f"quality: ours / {network} FID at equal time = {', '.join(pairs)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strict", action="store_true", help="fail when a benchmark failed")
    args = parser.parse_args()
    summary(args.results, args.out, args.strict)


if __name__ == "__main__":
    main()
