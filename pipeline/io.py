"""File IO every stage shares: atomic writes, the stage tables, and where each stage writes.

Every output is written to a temporary name beside its final path and renamed into place,
so a killed stage never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import StageError

DATA_DIR = Path("data")
PARTIAL_SUFFIX = ".part"

# The curation chain after download. Each stage reads the accepted table of the stage before
# it and writes its own ``data/<stage>/accepted.parquet`` (at least ``appid`` and ``path``,
# the image file to use from then on). Inserting a stage is one entry here plus its dvc.yaml
# entry.
CURATION_CHAIN: tuple[str, ...] = ("validate", "faces", "resize", "dataset")


def stage_dir(stage: str) -> Path:
    return DATA_DIR / stage


def accepted_table(stage: str) -> Path:
    if stage == "download":
        return stage_dir("download") / "manifest.parquet"
    return stage_dir(stage) / "accepted.parquet"


def upstream_table(stage: str) -> Path:
    """The table a curation stage reads: the accepted table of the stage before it."""
    index = CURATION_CHAIN.index(stage)
    return accepted_table(CURATION_CHAIN[index - 1] if index else "download")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual mode
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_table(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_table(path: str | Path, columns: tuple[str, ...] = ("appid", "path")) -> pd.DataFrame:
    """Read a stage table; stop with one line if it is missing or lacks a needed column."""
    path = Path(path)
    if not path.exists():
        stage = path.parent.name
        raise StageError(f"{path}: not found; run the '{stage}' stage first (dvc repro {stage})")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise StageError(f"{path}: unreadable parquet ({exc}); re-run its stage") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}; re-run its stage")
    return df


def remove_partials(directory: str | Path) -> int:
    """Delete temporary files a killed run left behind; return how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    count = 0
    for tmp in directory.glob(f".*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in place of ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old{PARTIAL_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prune_dir(directory: str | Path, keep: set[str]) -> int:
    """Delete files in ``directory`` whose names are not in ``keep``; return how many."""
    directory = Path(directory)
    removed = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.is_file() and entry.name not in keep:
                entry.unlink()
                removed += 1
    return removed
