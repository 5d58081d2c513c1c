"""Download one image kind for many apps from Steam's CDN: concurrent, resumable, atomic.

Progress survives ``kill -9``: each finished request is appended to a journal beside the
manifest, each image is written under a temporary name and renamed, and a re-run starts from
the manifest plus the journal, so only unfinished work is fetched again.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import pandas as pd
import requests
import urllib3
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
    # No longer in the app list; its image stays on disk (download.prune: false)
    delisted = "delisted"


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


def sniff_image(data: bytes | Path) -> str | None:
    """The image format Pillow recognises in the header of ``data`` (bytes or a file), or None.

    Only the header is read: full decoding (and catching truncation) is validate's job.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """What bounds one request: per read, overall, body size, and the run's stop signal."""

    timeout_s: float = 30.0  # longest wait for any one read
    deadline_s: float = 120.0  # the whole body, from the answer's headers on
    max_bytes: int = 10_000_000  # decoded body bytes
    stop: threading.Event = field(default_factory=threading.Event)


class Refused(Exception):
    """A body this request gives up on: ``status`` and one line for the manifest."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


def save_body(response: requests.Response, path: Path, limits: FetchLimits, started: float):
    """Stream the decoded body to ``path`` atomically; return (bytes, sha256) or raise Refused.

    Reads with ``read1`` (one socket read each, gzip output capped at the chunk by urllib3),
    so a trickling server cannot hold a read past ``timeout_s`` and the deadline, the size
    cap (a gzip bomb is counted decoded) and Ctrl-C are checked between short reads.
    """
    digest, size = hashlib.sha256(), 0
    with pio.atomic_path(path) as tmp:
        with tmp.open("wb") as out:
            while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise Refused(
                        Status.invalid,
                        f"body over download.max_bytes ({limits.max_bytes:,} bytes, decoded)",
                    )
                if limits.stop.is_set():
                    raise Refused(Status.error, "interrupted")
                if time.monotonic() - started > limits.deadline_s:
                    raise Refused(
                        Status.error, f"over download.deadline_s ({limits.deadline_s:g} s)"
                    )
                digest.update(chunk)
                out.write(chunk)
        if sniff_image(tmp) is None:
            content_type = response.headers.get("Content-Type", "unknown")
            raise Refused(
                Status.invalid, f"not an image (Content-Type {content_type}, {size} bytes)"
            )
    return size, digest.hexdigest()


def fetch_image(
    session: requests.Session,
    appid: int,
    kind: BannerKind,
    cdn_url: str,
    out_dir: Path,
    limits: FetchLimits,
    limiter: RateLimiter | None = None,
) -> Record:
    """Fetch one image; on success write it atomically to ``out_dir/<appid>.<ext>``."""
    url = image_url(cdn_url, appid, kind)
    record = Record(appid=int(appid), kind=kind.value, url=url, status=Status.error)
    if limiter:
        limiter.wait()
    try:
        with session.get(url, timeout=limits.timeout_s, stream=True) as response:
            # The deadline runs from the final answer's headers: retries and their waits
            # are bounded by retries and max_retry_after_s.
            started = time.monotonic()
            record.http_status = response.status_code
            if response.status_code in (404, 410):
                record.status = Status.missing
                return record
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}"
                return record
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > limits.max_bytes:
                record.status = Status.invalid
                record.error = (
                    f"Content-Length {int(declared):,} is over download.max_bytes "
                    f"({limits.max_bytes:,} bytes)"
                )
                return record
            path = out_dir / image_filename(appid, kind)
            record.bytes, record.sha256 = save_body(response, path, limits, started)
    except Refused as refused:
        record.status, record.error = refused.status, str(refused)
        return record
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        record.error = short_error(exc)
        return record
    record.status = Status.ok
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
    """What earlier (possibly killed) runs finished, by URL; the newest record wins. Labels
    are not part of a record: they come from the current app list."""
    records: dict[str, dict] = {}
    if manifest_path.exists():
        for row in pd.read_parquet(manifest_path).to_dict("records"):
            records[row["url"]] = {
                k: (None if pd.isna(v) else v) for k, v in row.items() if k in MANIFEST_COLUMNS
            }
    for row in Journal(journal_path(manifest_path)).read():
        records[row["url"]] = row
    return records


def has_image(record: dict) -> bool:
    """An ``ok`` (or ``delisted``) record whose image is still on disk."""
    path = record.get("path")
    return record["status"] in (Status.ok, Status.delisted) and bool(path) and Path(path).is_file()


def is_done(record: dict | None, retry_missing: bool) -> bool:
    """Whether an earlier result stands: an image still on disk, or a 404 we do not re-ask."""
    if record is None:
        return False
    if record["status"] in (Status.ok, Status.delisted):
        return has_image(record)
    return record["status"] == Status.missing and not retry_missing


def manifest_frame(
    records: Iterable[Record | dict], labels: Mapping[int, str] | None = None
) -> pd.DataFrame:
    """The manifest: one row per record, and each app's ``labels`` from the app list ("" for
    an app not in ``labels``, such as a delisted one)."""
    rows = [asdict(r) if isinstance(r, Record) else r for r in records]
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    df = df.astype(MANIFEST_DTYPES).sort_values("appid", kind="stable").reset_index(drop=True)
    for column in ("kind", "url", "status", "sha256", "error", "path"):
        df[column] = df[column].astype("string")
    labels = labels or {}
    df["labels"] = [str(labels.get(int(appid), "")) for appid in df["appid"]]
    return df


@dataclass
class DownloadPlan:
    """What a run must fetch, what earlier runs already settled, and what left the list."""

    done: list[dict]
    todo: list[int]
    delisted: list[dict] = field(default_factory=list)  # kept on disk (prune: false)

    @property
    def total(self) -> int:
        return len(self.done) + len(self.todo)


def check_shrink(listed: int, previous: dict[str, dict], params: DownloadParams) -> None:
    """Refuse an empty app list, or one under half the apps of the last run.

    An empty or truncated answer from Steam (or an emptied ids file) is far likelier than
    half of Steam's catalogue vanishing; ``download.allow_shrink: true`` says it did.
    """
    before = len({int(r["appid"]) for r in previous.values() if r["status"] != Status.delisted})
    if params.allow_shrink or (listed and listed * 2 >= before):
        return
    raise StageError(
        f"the app list has {listed:,} apps, the last download had {before:,}: refusing a list "
        "that shrank by half or more (an empty or cut-off app list?); check data/appids, or "
        "set download.allow_shrink=true if the apps really left"
    )


def plan_downloads(
    appids: Iterable[int], params: DownloadParams, manifest_path: str | Path
) -> DownloadPlan:
    previous = previous_records(Path(manifest_path))
    listed = sorted({int(a) for a in appids})
    check_shrink(len(listed), previous, params)
    plan = DownloadPlan(done=[], todo=[])
    for appid in listed:
        record = previous.get(image_url(params.cdn_url, appid, params.kind))
        if is_done(record, params.retry_missing):
            relisted = record["status"] == Status.delisted  # type: ignore[index]
            plan.done.append({**record, "status": Status.ok.value} if relisted else record)  # type: ignore[dict-item]
        else:
            plan.todo.append(appid)
    if not params.prune:
        wanted = set(listed)
        plan.delisted = [
            {**record, "status": Status.delisted.value}
            for record in previous.values()
            if int(record["appid"]) not in wanted and has_image(record)
        ]
    return plan


def run_threads(
    work: Callable[[int], Record], items: list[int], workers: int, stop: threading.Event
) -> Iterator[Record]:
    """``work`` over ``items`` on daemon threads, results as they finish.

    Written here instead of ThreadPoolExecutor because its threads cannot be daemons: on
    Ctrl-C, interpreter exit would wait for every request in flight (a trickling server
    held it 83 s). Here the main thread returns at once and sets ``stop``; what finished is
    in the journal, and a request still in flight leaves only a ``.part`` file, removed on
    the next run.
    """
    jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
    for item in items:
        jobs.put(item)
    results: queue.Queue[Record | BaseException] = queue.Queue()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                results.put(work(item))
            except BaseException as exc:  # handed to the main thread, which raises it
                results.put(exc)

    for index in range(min(workers, len(items))):
        threading.Thread(target=worker, name=f"download-{index}", daemon=True).start()
    try:
        for _ in items:
            while True:
                try:
                    result = results.get(timeout=0.2)  # short waits: Ctrl-C lands at once
                    break
                except queue.Empty:
                    continue
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        stop.set()


def download_images(
    plan: DownloadPlan,
    params: DownloadParams,
    out_dir: str | Path,
    manifest_path: str | Path,
    session: requests.Session | None = None,
    on_result: Callable[[Record], None] | None = None,
    labels: Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """Fetch ``plan.todo``; write the manifest (settled + fetched + delisted) and return it.

    ``labels``: each app's labels cell from the app list, carried into the manifest.

    With ``prune: true``, files in ``out_dir`` that are not an ``ok`` image of the manifest
    (apps no longer listed) are removed once the manifest is written; otherwise nothing is.
    """
    out_dir, manifest_path = Path(out_dir), Path(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    pio.remove_partials(out_dir)
    journal = Journal(journal_path(manifest_path))
    session = session or make_session(
        params.retries, params.backoff_s, params.workers, params.max_retry_after_s
    )
    limiter = RateLimiter(params.rate_per_s)
    limits = FetchLimits(params.timeout_s, params.deadline_s, params.max_bytes)

    def fetch(appid: int) -> Record:
        return fetch_image(session, appid, params.kind, params.cdn_url, out_dir, limits, limiter)

    fetched: list[Record] = []
    try:
        for record in run_threads(fetch, plan.todo, params.workers, limits.stop):
            journal.append(record)
            fetched.append(record)
            if on_result:
                on_result(record)
    finally:
        journal.close()  # on Ctrl-C the journal keeps what finished

    manifest = manifest_frame([*plan.done, *fetched, *plan.delisted], labels)
    pio.write_table(manifest_path, manifest)
    journal.close(remove=True)
    if params.prune:
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
        line += "; " + offline_hint("download.cdn_url=http://127.0.0.1:PORT (steamgan mirror)")
    else:
        line += "; check download.cdn_url and download.kind"
    raise StageError(line)


def summarize(manifest: pd.DataFrame) -> dict:
    counts = manifest["status"].value_counts()
    summary = {"total": len(manifest)}
    summary.update({status.value: int(counts.get(status.value, 0)) for status in Status})
    summary["bytes"] = int(manifest["bytes"].fillna(0).sum())
    return summary
