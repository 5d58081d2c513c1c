"""File IO every stage shares: atomic writes, the stage tables, and where each stage writes.

Every output is written to a temporary name beside its final path and renamed into place,
so a killed stage never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
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

# What each image keeps through the chain, whatever a stage adds or drops: where it came
# from (url), the bytes it was (sha256) and its labels. A stage that builds its accepted
# table afresh takes them over from its upstream table (carry_trace).
TRACE_COLUMNS: tuple[str, ...] = ("url", "sha256", "labels")

# An app's labels (the requested SteamSpy tags and genres it has, in params order, or a
# file's ``label`` cells) are one string column, names joined by "|" ("" for none): it
# round-trips through parquet and CSV as is. A name may not contain "|" (params check it).
LABEL_SEPARATOR = "|"
# A file name longer than this (UTF-8 bytes) is cut and given a digest (short_name): file
# systems stop at 255 bytes, and the temporary name of an atomic write adds about 20.
NAME_BYTES = 200


def join_labels(names: Iterable[str]) -> str:
    """The ``labels`` cell of ``names``: stripped, empties and repeats dropped, in order."""
    kept: list[str] = []
    for name in names:
        name = str(name).strip()
        if name and name not in kept:
            kept.append(name)
    return LABEL_SEPARATOR.join(kept)


def split_labels(cell: object) -> list[str]:
    """The names in a ``labels`` cell ("" or a missing value: none)."""
    if not isinstance(cell, str) or not cell:
        return []
    return [name for name in cell.split(LABEL_SEPARATOR) if name]


def carry_trace(table: pd.DataFrame, upstream: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the trace columns (TRACE_COLUMNS) it lacks taken from ``upstream``,
    matched on appid; a column upstream lacks too stays absent, except ``labels`` ("")."""
    wanted = [c for c in TRACE_COLUMNS if c in upstream.columns and c not in table.columns]
    if wanted:
        trace = upstream[["appid", *wanted]].drop_duplicates("appid")
        trace = trace.astype({"appid": "int64"})
        table = table.merge(trace, on="appid", how="left", validate="many_to_one")
    labels = table["labels"].fillna("").astype(str) if "labels" in table.columns else ""
    return table.assign(labels=labels)


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
_DIR_MODE = 0o777 & ~_umask()


def _temp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual mode
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """Turn "no space left on device" inside the block into one line naming ``path``.

    The OS error names no file (torch's says "unexpected pos"), so the user cannot tell
    which output failed; every atomic write goes through here.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StageError(
            f"{path}: could not be written, the disk is full ({exc.strerror}); "
            "free some space and run the stage again"
        ) from None
    except RuntimeError as exc:  # torch.save reports a full disk as a failed write
        if "unexpected pos" not in str(exc) and "No space left" not in str(exc):
            raise
        raise StageError(
            f"{path}: could not be written, the disk is probably full ({str(exc)[:120]}); "
            "free some space and run the stage again"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    with disk_full_names(path):
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


def remove_partials(directory: str | Path, name: str = "") -> int:
    """Delete temporary files and folders a killed run left behind; return how many.

    ``name`` limits it to the temporaries of one output (``.<name>.*.part``), for a folder
    that holds other outputs' temporaries too. Only call it under the stage's lock
    (``stage_lock``): then no temporary can belong to a live run.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    count = 0
    pattern = f".{name}.*{PARTIAL_SUFFIX}" if name else f".*{PARTIAL_SUFFIX}"
    for tmp in directory.glob(pattern):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        count += 1
    return count


def swap_dir(new: Path, path: Path) -> None:
    """Put the finished folder ``new`` in place of ``path`` (two renames; the old one goes)."""
    with disk_full_names(path):
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old{PARTIAL_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(new, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in place of ``path`` on success.

    Temporary folders of ``path`` that killed runs left behind are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(path.parent, path.name)
    with disk_full_names(path):
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
        )
    tmp.chmod(_DIR_MODE)  # mkdtemp makes 0700 folders; outputs get the usual mode
    try:
        with disk_full_names(path):
            yield tmp
        swap_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staging_dir(path: str | Path) -> Path:
    """Where a resumable stage builds the next ``path`` before ``swap_dir`` puts it in place.

    A fixed name (not ``.part``), so a killed run's work is found and reused by the next one.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.staging")


def lock_path(stage: str) -> Path:
    return DATA_DIR / f".{stage}.lock"


@contextlib.contextmanager
def stage_lock(stage: str) -> Iterator[None]:
    """Hold ``data/.<stage>.lock`` for the block; refuse in one line if another run holds it.

    Two runs writing one output folder corrupt each other (doubled DVCLive rows, a locked
    SQLite cache). An ``flock`` is released by the kernel when its holder dies, so a killed
    run never leaves a stale lock. Written on ``fcntl`` rather than the ``filelock``
    package because filelock truncates the lock file on every attempt, so the file could
    not tell the refused run who holds it.
    """
    path = lock_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StageError(
                f"{stage_dir(stage)} is in use by another '{stage}' run (pid {holder}); "
                "wait for it to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


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


def unique_name(stems: Sequence[str], taken: set[str], key: str, suffix: str = "") -> str:
    """The first of ``stems`` (+ ``suffix``) not in ``taken``, else the last one with a
    short digest of ``key`` (``a_jpg-3f2a1c.png``); the name is added to ``taken``.

    Two inputs must never get one output name: the second overwrote the first on disk, or a
    zip held the name twice. A digest of the input's own name, not a counter, keeps a name
    from depending on which other inputs there are."""
    for stem in stems:
        if stem + suffix not in taken:
            break
    else:
        stem = f"{stems[-1]}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        base, number = stem, 1
        while stem + suffix in taken:
            stem, number = f"{base}-{number}", number + 1
    taken.add(stem + suffix)
    return stem + suffix


def short_name(name: str) -> str:
    """``name``, or its start and a digest of it when longer than NAME_BYTES in UTF-8."""
    if len(name.encode()) <= NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    cut = name.encode()[: NAME_BYTES - 9].decode(errors="ignore")
    return f"{cut}-{digest}"


def safe_name(text: str) -> str:
    """A file-name-safe, readable form of any text (a domain, a reason): letters and digits
    of any script stay (アニメ), every other run of characters becomes one ``_``."""
    text = unicodedata.normalize("NFC", text)  # an accent as one letter, not a mark
    return short_name(re.sub(r"[^\w.-]+", "_", text).strip("._") or "_")
