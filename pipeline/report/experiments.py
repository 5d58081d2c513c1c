"""Experiments: the runs ``dvc exp show --json`` lists, their params diff and metrics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FID = "data/evaluate/metrics.json:fid"
# Metric files in the order their columns come (the rest after them).
METRIC_ORDER = ("evaluate", "dataset", "dvclive", "render", "faces", "validate", "download")


def metric_label(key: str) -> str:
    """``data/evaluate/metrics.json:fid`` → ``evaluate fid``: the stage (folder) and the key."""
    file, _, name = key.partition(":")
    return f"{Path(file).parent.name or Path(file).stem} {name}"


def _metric_rank(key: str) -> tuple[int, str]:
    stage = metric_label(key).split(" ")[0]
    return (METRIC_ORDER.index(stage) if stage in METRIC_ORDER else len(METRIC_ORDER), key)


@dataclass
class Experiments:
    rows: list[dict[str, Any]] = field(default_factory=list)  # name, rev, params, metrics
    params: list[str] = field(default_factory=list)  # the keys whose values differ
    metrics: list[str] = field(default_factory=list)
    error: str = ""


def flatten_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (an empty dict inside keeps its key)."""
    if isinstance(obj, dict) and (obj or not prefix):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten_keys(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def _row(entry: dict, name: str) -> dict[str, Any]:
    data = entry.get("data") or {}
    params = flatten_keys((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
    metrics: dict[str, Any] = {}
    for file, content in (data.get("metrics") or {}).items():
        for key, value in flatten_keys((content or {}).get("data") or {}).items():
            metrics[f"{file}:{key}"] = value
    return {
        "name": name,
        "rev": str(entry.get("rev", ""))[:7],
        "params": params,
        "metrics": metrics,
    }


def parse_exp_show(listing: list[dict]) -> Experiments:
    """Baselines and their experiments (the workspace only when nothing else is listed),
    the params that differ between them and the metrics, best FID first."""
    rows = []
    for base in listing:
        if base.get("rev") != "workspace":
            rows.append(_row(base, base.get("name") or str(base.get("rev", ""))[:7]))
        for experiment in base.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                rows.append(_row(rev, rev.get("name") or str(rev.get("rev", ""))[:7]))
    if not rows and listing:
        rows.append(_row(listing[0], "workspace"))
    keys = sorted({k for r in rows for k in r["params"]})
    differing = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in rows}) > 1]
    metric_keys = sorted(
        {k for r in rows for k, v in r["metrics"].items() if isinstance(v, int | float)}
    )
    metric_keys = [
        k for k in metric_keys if len({json.dumps(r["metrics"].get(k)) for r in rows}) > 1
    ]
    metric_keys.sort(key=_metric_rank)
    if FID in metric_keys:
        metric_keys.remove(FID)
        metric_keys.insert(0, FID)

    def fid(row: dict) -> float:
        value = row["metrics"].get(FID)
        return value if isinstance(value, int | float) and not math.isnan(value) else math.inf

    rows.sort(key=fid)
    return Experiments(rows, differing, metric_keys)


def exp_show(repo: Path, timeout_s: float = 120) -> Experiments:
    """Ask DVC (``dvc exp show --json``); a failure is reported, never raised."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "show", "--json"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Experiments(error=f"dvc exp show failed: {exc}")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return Experiments(
            error=f"dvc exp show failed: {lines[-1] if lines else result.returncode}"
        )
    text = result.stdout
    try:
        listing, _ = json.JSONDecoder().raw_decode(text[text.index("[") :])
    except ValueError:
        return Experiments(error="dvc exp show printed no JSON list")
    return parse_exp_show(listing)
