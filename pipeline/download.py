"""Download one image kind for many apps from Steam's CDN: concurrent, resumable, atomic.

Progress survives ``kill -9``: each finished request is appended to a journal beside the
manifest, each image is written under a temporary name and renamed, and a re-run starts from
the manifest plus the journal, so only unfinished work is fetched again.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd
import requests
from PIL import Image, UnidentifiedImageError

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.http import RateLimiter, make_session, offline_hint, short_error
from pipeline.params import DownloadParams
from pipeline.steam import BannerKind, image_filename, image_url


class Status(StrEnum):
    ok = "ok"
    missing = "missing"  # 404/410: Steam has no image of this kind for the app
    invalid = "invalid"  # 200, but the body is not an image (an HTML error page, say)
    error = "error"  # network failure, or 429/5xx still after every retry


@dataclass
class Record:
    appid: int
    kind: str
    url: str
    status: str
    http_status: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    path: str | None = None


MANIFEST_COLUMNS = tuple(Record.__dataclass_fields__)
MANIFEST_DTYPES = {"appid": "int64", "http_status": "Int64", "bytes": "Int64"}


def sniff_image(data: bytes) -> str | None:
    """The image format Pillow recognises in ``data``'s header, or None.

    Only the header is read: full decoding (and catching truncation) is validate's job.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def fetch_image(
    session: requests.Session,
    appid: int,
    kind: BannerKind,
    cdn_url: str,
    out_dir: Path,
    timeout_s: float,
    limiter: RateLimiter | None = None,
) -> Record:
    """Fetch one image; on success write it atomically to ``out_dir/<appid>.<ext>``."""
    url = image_url(cdn_url, appid, kind)
    record = Record(appid=int(appid), kind=kind.value, url=url, status=Status.error)
    if limiter:
        limiter.wait()
    try:
        response = session.get(url, timeout=timeout_s)
        data = response.content
    except requests.RequestException as exc:
        record.error = short_error(exc)
        return record
    record.http_status = response.status_code
    if response.status_code in (404, 410):
        record.status = Status.missing
        return record
    if response.status_code != 200:
        record.error = f"HTTP {response.status_code}"
        return record
    if sniff_image(data) is None:
        content_type = response.headers.get("Content-Type", "unknown")
        record.status = Status.invalid
        record.error = f"not an image (Content-Type {content_type}, {len(data)} bytes)"
        return record
    path = out_dir / image_filename(appid, kind)
    pio.write_bytes(path, data)
    record.status = Status.ok
    record.bytes = len(data)
    record.sha256 = hashlib.sha256(data).hexdigest()
    record.path = path.as_posix()
    return record


class Journal:
    """Append-only JSON lines of finished records; a torn last line (kill -9) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._file = None

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def append(self, record: Record) -> None:
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a")
            self._file.write(json.dumps(asdict(record)) + "\n")
            self._file.flush()

    def close(self, remove: bool = False) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        if remove:
            self.path.unlink(missing_ok=True)


def journal_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".journal.jsonl")


def previous_records(manifest_path: Path) -> dict[str, dict]:
    """What earlier (possibly killed) runs finished, by URL; the newest record wins."""
    records: dict[str, dict] = {}
    if manifest_path.exists():
        for row in pd.read_parquet(manifest_path).to_dict("records"):
            records[row["url"]] = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    for row in Journal(journal_path(manifest_path)).read():
        records[row["url"]] = row
    return records


def is_done(record: dict | None, retry_missing: bool) -> bool:
    """Whether an earlier result stands: an image still on disk, or a 404 we do not re-ask."""
    if record is None:
        return False
    if record["status"] == Status.ok:
        path = record.get("path")
        return bool(path) and Path(path).is_file()
    return record["status"] == Status.missing and not retry_missing


def manifest_frame(records: Iterable[Record | dict]) -> pd.DataFrame:
    rows = [asdict(r) if isinstance(r, Record) else r for r in records]
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    df = df.astype(MANIFEST_DTYPES).sort_values("appid", kind="stable").reset_index(drop=True)
    for column in ("kind", "url", "status", "sha256", "error", "path"):
        df[column] = df[column].astype("string")
    return df


@dataclass
class DownloadPlan:
    """What a run must fetch, and what earlier runs already settled."""

    done: list[dict]
    todo: list[int]

    @property
    def total(self) -> int:
        return len(self.done) + len(self.todo)


def plan_downloads(
    appids: Iterable[int], params: DownloadParams, manifest_path: str | Path
) -> DownloadPlan:
    previous = previous_records(Path(manifest_path))
    plan = DownloadPlan(done=[], todo=[])
    for appid in sorted({int(a) for a in appids}):
        record = previous.get(image_url(params.cdn_url, appid, params.kind))
        if is_done(record, params.retry_missing):
            plan.done.append(record)  # type: ignore[arg-type]
        else:
            plan.todo.append(appid)
    return plan


def download_images(
    plan: DownloadPlan,
    params: DownloadParams,
    out_dir: str | Path,
    manifest_path: str | Path,
    session: requests.Session | None = None,
    on_result: Callable[[Record], None] | None = None,
) -> pd.DataFrame:
    """Fetch ``plan.todo``; write the manifest (settled + fetched) and return it.

    Images of apps no longer listed are removed from ``out_dir`` once the manifest is written.
    """
    out_dir, manifest_path = Path(out_dir), Path(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    pio.remove_partials(out_dir)
    journal = Journal(journal_path(manifest_path))
    session = session or make_session(
        params.retries, params.backoff_s, params.workers, params.max_retry_after_s
    )
    limiter = RateLimiter(params.rate_per_s)
    fetched: list[Record] = []
    pool = ThreadPoolExecutor(max_workers=params.workers, thread_name_prefix="download")
    try:
        futures = [
            pool.submit(
                fetch_image,
                session,
                appid,
                params.kind,
                params.cdn_url,
                out_dir,
                params.timeout_s,
                limiter,
            )
            for appid in plan.todo
        ]
        for future in as_completed(futures):
            record = future.result()
            journal.append(record)
            fetched.append(record)
            if on_result:
                on_result(record)
    finally:
        # On Ctrl-C, drop queued requests; the journal keeps what finished.
        pool.shutdown(wait=True, cancel_futures=True)
        journal.close()

    manifest = manifest_frame([*plan.done, *fetched])
    pio.write_table(manifest_path, manifest)
    journal.close(remove=True)
    keep = {Path(p).name for p in manifest.loc[manifest["status"] == Status.ok, "path"]}
    pio.prune_dir(out_dir, keep)
    return manifest


def check_any_ok(manifest: pd.DataFrame) -> None:
    """Stop with one line naming the commonest failure when no image at all was fetched: a
    download that failed everywhere (offline, a wrong cdn_url or kind) must not pass as a
    success and surface stages later as an empty dataset. The manifest is written first."""
    if manifest.empty or (manifest["status"] == Status.ok.value).any():
        return
    failed = manifest["error"].fillna(manifest["status"]).value_counts()
    cause, count = failed.index[0], int(failed.iloc[0])
    line = f"no image downloaded: all {len(manifest):,} failed, {count:,} with {cause}"
    if manifest["http_status"].isna().all():  # never reached a server
        line += "; " + offline_hint("download.cdn_url=http://127.0.0.1:PORT (a local mirror)")
    else:
        line += "; check download.cdn_url and download.kind"
    raise StageError(line)


def summarize(manifest: pd.DataFrame) -> dict:
    counts = manifest["status"].value_counts()
    summary = {"total": len(manifest)}
    summary.update({status.value: int(counts.get(status.value, 0)) for status in Status})
    summary["bytes"] = int(manifest["bytes"].fillna(0).sum())
    return summary
