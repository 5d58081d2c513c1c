"""What the report reads: every stage's outputs, each optional (a stage may not have run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io as pio

LIVE_DIR = Path("dvclive")


# Files that exist but cannot be read, with why: the page lists them and treats them as
# absent, rather than failing (the other sections are still worth seeing).
Damaged = dict[str, str]


def _table(path: Path, damaged: Damaged) -> pd.DataFrame | None:
    """A stage table, or None when the stage has not run or left a damaged file."""
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        damaged[path.as_posix()] = f"{exc.__class__.__name__}: {exc}"[:200]
        return None


def _json(path: Path, damaged: Damaged) -> Any:
    if not path.exists():
        return None
    try:
        return pio.read_json(path)
    except (ValueError, OSError) as exc:
        damaged[path.as_posix()] = f"{exc.__class__.__name__}: {exc}"[:200]
        return None


@dataclass
class StageOutputs:
    """One stage's tables and json files, by name (absent ones are missing from the dicts)."""

    name: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return bool(self.tables or self.files)


# The files each stage writes that the report reads (README's stages table).
STAGE_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "appids": (("appids",), ()),
    "download": (("manifest",), ("summary",)),
    "validate": (("accepted", "rejected"), ("summary",)),
    "faces": (("accepted", "rejected", "detections"), ("summary",)),
    "resize": (("accepted", "rejected"), ()),
    "dataset": ((), ("stats",)),
    "reference": ((), ("summary",)),
    "evaluate": ((), ("metrics", "notes")),
    "render": ((), ("render", "metrics")),
}


def load_stage(name: str, root: Path, damaged: Damaged) -> StageOutputs:
    tables, files = STAGE_FILES[name]
    folder = root / pio.stage_dir(name)
    out = StageOutputs(name)
    for table in tables:
        df = _table(folder / f"{table}.parquet", damaged)
        if df is not None:
            out.tables[table] = df
    for file in files:
        obj = _json(folder / f"{file}.json", damaged)
        if obj is not None:
            out.files[file] = obj
    return out


@dataclass
class TrainOutputs:
    """DVCLive's last values, curves (one DataFrame of step and value per metric) and grids."""

    metrics: dict[str, Any] | None
    curves: dict[str, pd.DataFrame]
    samples: list[Path]
    run: dict[str, Any] | None = None  # data/train/run.json: what the run is, resolved

    @property
    def ran(self) -> bool:
        return self.metrics is not None


def load_train(root: Path, damaged: Damaged) -> TrainOutputs:
    live = root / LIVE_DIR
    curves: dict[str, pd.DataFrame] = {}
    metrics_dir = live / "plots" / "metrics"
    for tsv in sorted(metrics_dir.rglob("*.tsv")):
        try:
            df = pd.read_csv(tsv, sep="\t")
        except (ValueError, pd.errors.EmptyDataError) as exc:
            damaged[tsv.as_posix()] = f"{exc.__class__.__name__}: {exc}"[:200]
            continue
        if "step" in df.columns and len(df.columns) == 2:
            curves[tsv.relative_to(metrics_dir).with_suffix("").as_posix()] = df
    samples = sorted((live / "plots" / "images" / "samples").glob("*.png"))
    run = _json(root / pio.stage_dir("train") / "run.json", damaged)
    run = run if isinstance(run, dict) else None
    return TrainOutputs(_json(live / "metrics.json", damaged), curves, samples, run)


@dataclass
class RunOutputs:
    stages: dict[str, StageOutputs]
    train: TrainOutputs
    root: Path
    damaged: Damaged = field(default_factory=dict)

    def table(self, stage: str, name: str) -> pd.DataFrame | None:
        return self.stages[stage].tables.get(name)

    def file(self, stage: str, name: str) -> Any:
        return self.stages[stage].files.get(name)


def load_run(root: Path = Path(".")) -> RunOutputs:
    """Everything the stages left under ``root`` (the repository root)."""
    damaged: Damaged = {}
    stages = {name: load_stage(name, root, damaged) for name in STAGE_FILES}
    return RunOutputs(stages, load_train(root, damaged), root, damaged)
