"""Experiments: the runs ``dvc exp show --json`` lists, their params diff and metrics."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FID = "data/evaluate/metrics.json:fid"

# The numbers a user compares runs by (name, key): the columns of `steamgan experiments` and
# the metric rows of the report's Experiments table. The other ~50 numbers of the metric
# files (loss values, per-detector counts) are in `dvc exp show`.
HEADLINE = (
    ("fid", FID),
    ("kid", "data/evaluate/metrics.json:kid"),
    ("prec", "data/evaluate/metrics.json:precision"),
    ("recall", "data/evaluate/metrics.json:recall"),
    ("1-face", "data/evaluate/metrics.json:one_face_rate"),
    ("images", "data/dataset/stats.json:count"),
    ("steps", "dvclive/metrics.json:step"),
)
_HEADLINE_NAMES = {key: name for name, key in HEADLINE}


def metric_label(key: str) -> str:
    """A headline metric's short name; else ``data/x/metrics.json:k`` → ``x k``."""
    if key in _HEADLINE_NAMES:
        return _HEADLINE_NAMES[key]
    file, _, name = key.partition(":")
    return f"{Path(file).parent.name or Path(file).stem} {name}"


@dataclass
class Experiments:
    rows: list[dict[str, Any]] = field(default_factory=list)  # name, rev, params, metrics
    params: list[str] = field(default_factory=list)  # the keys whose values differ
    metrics: list[str] = field(default_factory=list)  # the headline metrics any run has
    error: str = ""
    left_out: int = 0  # commits listed without metrics (never ran: a fresh clone's base)


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
    rev = str(entry.get("rev", ""))
    return {
        "name": name,
        "rev": rev[:7] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev,  # never "workspa"
        "params": params,
        "metrics": metrics,
    }


def parse_exp_show(listing: list[dict]) -> Experiments:
    """Baselines and their experiments (the workspace only when nothing else is listed)
    that have metrics, the params that differ between them and the headline metrics, best
    FID first. A commit that never ran (a fresh clone's base) is counted, not listed: its
    column would be all null and its params, the committed ones, would all differ."""
    rows = []
    for base in listing:
        if base.get("rev") != "workspace":
            rows.append(_row(base, base.get("name") or str(base.get("rev", ""))[:7]))
        for experiment in base.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                rows.append(_row(rev, rev.get("name") or str(rev.get("rev", ""))[:7]))
    if not rows and listing:
        rows.append(_row(listing[0], "workspace"))
    ran = [r for r in rows if r["metrics"]]
    left_out = len(rows) - len(ran) if ran else 0
    rows = ran or rows
    keys = sorted({k for r in rows for k in r["params"]})
    differing = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in rows}) > 1]
    metric_keys = [key for _, key in HEADLINE if any(key in r["metrics"] for r in rows)]

    def fid(row: dict) -> float:
        value = row["metrics"].get(FID)
        return value if isinstance(value, int | float) and not math.isnan(value) else math.inf

    rows.sort(key=fid)
    return Experiments(rows, differing, metric_keys, left_out=left_out)


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
    rows = exps.rows
    metrics = [(_HEADLINE_NAMES[key], key) for key in exps.metrics]
    params = exps.params
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
    if exps.left_out:
        lines.append(f"({exps.left_out} commit(s) without metrics left out)")
    return "\n".join(lines)


def _short_param_names(keys: list[str]) -> dict[str, str]:
    """``train.lightweight.channels`` → ``lightweight.channels`` (a nested key without its
    section, where that stays unique): the params column stays short."""
    short = {k: k.split(".", 1)[1] if k.count(".") >= 2 else k for k in keys}
    taken = list(short.values())
    return {k: v if taken.count(v) == 1 else k for k, v in short.items()}
