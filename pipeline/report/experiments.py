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


# The columns of `steamgan experiments`: the numbers a user compares runs by (name, key).
HEADLINE = (
    ("fid", FID),
    ("kid", "data/evaluate/metrics.json:kid"),
    ("prec", "data/evaluate/metrics.json:precision"),
    ("recall", "data/evaluate/metrics.json:recall"),
    ("1-face", "data/evaluate/metrics.json:one_face_rate"),
    ("images", "data/dataset/stats.json:count"),
    ("steps", "dvclive/metrics.json:step"),
)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def experiments_table(exps: Experiments, width: int = 120) -> str:
    """The runs as a plain table at most ``width`` characters wide: name, the headline
    metrics any run has, and the params that differ between the runs as ``key=value``
    (the section dropped where the key is still unique), cut with … to fit. Written here
    because ``dvc exp show`` keeps every param when the base commit never ran and prints
    ``…`` for every cell when piped."""
    if exps.error:
        return exps.error
    if not exps.rows:
        return "no experiments: run `dvc repro` or `dvc exp run` first"
    ran = [r for r in exps.rows if r["metrics"]]  # a commit that never ran has no metrics
    rows = ran or exps.rows
    metrics = [(name, key) for name, key in HEADLINE if any(key in r["metrics"] for r in rows)]
    keys = sorted({k for r in rows for k in r["params"]})  # differing among the runs shown
    params = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in rows}) > 1]
    short = _short_param_names(params)
    header = ["experiment", *(name for name, _ in metrics), "params that differ"]
    body = []
    for row in rows:
        # shortest first: more of them fit before the cut
        pairs = sorted((f"{short[k]}={_cell(row['params'].get(k))}" for k in params), key=len)
        changes = " ".join(pairs)
        cells = [_cut(row["name"], 24), *(_cell(row["metrics"].get(k)) for _, k in metrics)]
        body.append([*cells, changes])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    used = sum(widths) + 2 * len(widths)
    last = max(width - used, 10)
    lines = []
    for cells in [header, *body]:
        fixed = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=False))
        ]
        lines.append(("  ".join([*fixed, _cut(cells[-1], last)])).rstrip())
    if len(rows) < len(exps.rows):
        lines.append(f"({len(exps.rows) - len(rows)} commit(s) without metrics left out)")
    return "\n".join(lines)


def _short_param_names(keys: list[str]) -> dict[str, str]:
    """``train.lightweight.channels`` → ``lightweight.channels`` (a nested key without its
    section, where that stays unique): the params column stays short."""
    short = {k: k.split(".", 1)[1] if k.count(".") >= 2 else k for k in keys}
    taken = list(short.values())
    return {k: v if taken.count(v) == 1 else k for k, v in short.items()}
