"""What the report reads: every stage's outputs, each optional (a stage may not have run).

The report folder is meant to be shared, so it reads only regular files inside the project
(``project_file``): a table's ``path`` that is absolute or climbs with ``..``, or a link
out of the project (a render picture linked to /etc/passwd), is never read nor copied."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io as pio
from pipeline.images import ImageProblem, check_regular_file

LIVE_DIR = Path("dvclive")


# Files that exist but cannot be read, with why: the page lists them and treats them as
# absent, rather than failing (the other sections are still worth seeing).
Damaged = dict[str, str]


class NotShown(Exception):
    """A file the report does not read: outside the project, or not a regular file."""


def project_file(root: Path, path: str | Path) -> Path:
    """``path`` (relative to the project ``root``, or absolute) as the real file it names,
    links followed, when that is inside ``root``; NotShown says why not. A path that does
    not exist is returned as it is (its reader says "not found")."""
    base = Path(root).resolve()
    real = (base / path).resolve()
    if not real.is_relative_to(base):
        how = "a link out of it" if (base / path).is_symlink() else "not a path inside it"
        raise NotShown(f"outside the project ({how})")
    if real.exists():
        try:
            check_regular_file(real)
        except ImageProblem as problem:
            raise NotShown(problem.detail) from None
    return real


def _table(path: Path, damaged: Damaged, root: Path) -> pd.DataFrame | None:
    """A stage table, or None when the stage has not run or left a damaged file."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        df = pd.read_parquet(project_file(root, path))
    except Exception as exc:  # pyarrow raises several types for a damaged file
        damaged[path.as_posix()] = _why(exc)
        return None
    return df


def _json(path: Path, damaged: Damaged, root: Path) -> Any:
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return pio.read_json(project_file(root, path))
    except (ValueError, OSError, NotShown) as exc:
        damaged[path.as_posix()] = _why(exc)
        return None


def _why(exc: Exception) -> str:
    if isinstance(exc, NotShown):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc}"[:200]


def whole_appids(df: pd.DataFrame, where: str, notes: list[str]) -> pd.DataFrame:
    """``df`` with its ``appid`` column as nullable integers: a value that is not a whole
    number (a string, 3.7) becomes missing, with a line in ``notes``, so that one bad row
    is shown without its app id instead of stopping the page."""
    if "appid" not in df or pd.api.types.is_integer_dtype(df["appid"]):
        return df
    numbers = pd.to_numeric(df["appid"], errors="coerce")
    whole = numbers.notna() & (numbers % 1 == 0) & (numbers.abs() < 2**63)
    for row in (~whole & df["appid"].notna()).to_numpy().nonzero()[0]:
        notes.append(
            f"{where}: row {row}: appid {df['appid'].iloc[row]!r} is not an app id; the row "
            "is shown with '?' for it, and left out of the traceability table"
        )
    return df.assign(appid=numbers.where(whole).astype("Float64").astype("Int64"))


def with_appid(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that have an app id (``whole_appids`` made the others missing)."""
    return df[df["appid"].notna()]


@dataclass
class StageOutputs:
    """One stage's tables and json files, by name (absent ones are missing from the dicts)."""

    name: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return bool(self.tables or self.files)


# The files each stage writes that the report reads (the table in docs/stages.md).
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


def load_stage(name: str, root: Path, damaged: Damaged, notes: list[str]) -> StageOutputs:
    tables, files = STAGE_FILES[name]
    folder = root / pio.stage_dir(name)
    out = StageOutputs(name)
    for table in tables:
        df = _table(folder / f"{table}.parquet", damaged, root)
        if df is not None:
            where = (pio.stage_dir(name) / f"{table}.parquet").as_posix()
            out.tables[table] = whole_appids(df, where, notes)
    for file in files:
        obj = _json(folder / f"{file}.json", damaged, root)
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
            df = pd.read_csv(project_file(root, tsv), sep="\t")
        except (ValueError, pd.errors.EmptyDataError, NotShown) as exc:
            damaged[tsv.as_posix()] = _why(exc)
            continue
        if "step" in df.columns and len(df.columns) == 2:
            curves[tsv.relative_to(metrics_dir).with_suffix("").as_posix()] = df
    samples = sorted((live / "plots" / "images" / "samples").glob("*.png"))
    run = _json(root / pio.stage_dir("train") / "run.json", damaged, root)
    run = run if isinstance(run, dict) else None
    return TrainOutputs(_json(live / "metrics.json", damaged, root), curves, samples, run)


@dataclass
class RunOutputs:
    stages: dict[str, StageOutputs]
    train: TrainOutputs
    root: Path
    damaged: Damaged = field(default_factory=dict)
    # rows and pictures the page shows with a placeholder or leaves out, with why, one line
    # each (the page's notes): one bad value never stops the page
    notes: list[str] = field(default_factory=list)

    def relative(self, path: str | Path) -> str:
        """``path`` as the page names it: relative to the project when inside it."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def table(self, stage: str, name: str) -> pd.DataFrame | None:
        return self.stages[stage].tables.get(name)

    def file(self, stage: str, name: str) -> Any:
        return self.stages[stage].files.get(name)


def load_run(root: Path = Path(".")) -> RunOutputs:
    """Everything the stages left under ``root`` (the repository root)."""
    damaged: Damaged = {}
    notes: list[str] = []
    stages = {name: load_stage(name, root, damaged, notes) for name in STAGE_FILES}
    return RunOutputs(stages, load_train(root, damaged), root, damaged, notes)
