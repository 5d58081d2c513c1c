"""A local stand-in for Steam: any folders of images served as Steam's app list and CDN.

``steamgan mirror SRC...`` is how the pipeline runs offline and on a user's own pictures:
the ``appids`` stage reads the app list from it (``appids.steam_api_url``) and ``download``
fetches ``<cdn_url>/<appid>/<kind>.<ext>`` from it, exactly as from Steam, so every curation
stage runs unchanged. Images are served as they are on disk (bytes untouched, whatever
their size: ``validate.expected_size: null`` accepts them), under the name of whichever
kind is asked for.

App ids: a file already in Steam's layout keeps its id (``<appid>/<kind>.jpg``, or
``<appid>.jpg`` listed in an ``apps.csv`` beside it, as the shared capsules); any other
picture gets a stable id at or above ``FIRST_LOCAL_APPID``, above every real Steam app,
derived from its path under its source folder. Its name is the file's stem (or the
``name`` in that ``apps.csv``) and its label the folder it is in: ``/apps.csv`` saved as
``appids.file`` gives ``dataset.labels: tags`` a class per folder.

Python's ``http.server`` serves it: one static, read-only mapping on 127.0.0.1 needs no
more (ThreadingHTTPServer answers the download stage's concurrent requests).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.errors import StageError
from pipeline.steam import MAX_APPID, BannerKind

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
FIRST_LOCAL_APPID = 100_000_000  # Steam's ids are below 4 million today
LOCAL_APPID_SPAN = 900_000_000
APP_LIST_PATH = "/ISteamApps/GetAppList/v2/"
APPS_CSV_PATH = "/apps.csv"
_IMAGE_PATH = re.compile(r"^/(\d+)/([A-Za-z0-9_]+)\.([a-z]+)$")
_CONTENT_TYPES = {".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}


@dataclass
class MirrorApp:
    appid: int
    name: str
    label: str  # the folder it is in
    # kind -> picture; "" (a picture outside the CDN layout) answers for every kind
    paths: dict[str, Path] = field(default_factory=dict)

    def picture(self, kind: BannerKind) -> Path | None:
        return self.paths.get(kind.value) or self.paths.get("")


def _images(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not hidden:
            yield path


def _steam_appid(path: Path, listed: dict[int, str]) -> int | None:
    """The id a file in Steam's layout already has: ``<appid>/<kind>.<ext>`` (the CDN's
    layout) or ``<appid>.jpg`` listed in an ``apps.csv`` beside it (the shared capsules).
    Other numbered files (a user's 001.png) are not taken for Steam ids."""
    if path.parent.name.isdigit() and path.stem in BannerKind.__members__:
        return int(path.parent.name)
    if path.stem.isdigit() and int(path.stem) in listed:
        return int(path.stem)
    return None


def _local_appid(key: str, taken: Container[int]) -> int:
    """A stable id for a picture outside Steam's layout: from its path's hash, moved on to
    the next free id on a collision (the sorted walk makes that deterministic too)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    appid = FIRST_LOCAL_APPID + digest % LOCAL_APPID_SPAN
    while appid in taken:
        appid = appid + 1 if appid < FIRST_LOCAL_APPID + LOCAL_APPID_SPAN else FIRST_LOCAL_APPID
    return appid


def _csv_names(folder: Path) -> dict[int, str]:
    """Names from an ``apps.csv`` (appid,name,...) beside the pictures, if there is one."""
    path = folder / "apps.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(handle)
        return {
            int(row["appid"]): (row.get("name") or "").strip()
            for row in rows
            if (row.get("appid") or "").strip().isdigit()
        }


def collect_apps(sources: Iterable[str | Path]) -> list[MirrorApp]:
    """Every picture under the source folders (or single files) as an app, by appid.

    A Steam id two pictures claim for the same kind is an error naming both: the mirror
    could serve only one of them.
    """
    apps: dict[int, MirrorApp] = {}
    for source in sources:
        source = Path(source)
        if not source.exists():
            raise StageError(f"{source}: no such folder or image")
        root = source if source.is_dir() else source.parent
        files = _images(source) if source.is_dir() else [source]
        names: dict[Path, dict[int, str]] = {}
        for path in files:
            folder = path.parent
            if folder not in names:
                names[folder] = _csv_names(folder)
            appid = _steam_appid(path, names[folder])
            kind = path.stem if appid is not None and path.stem in BannerKind.__members__ else ""
            if appid is None:
                key = f"{source.name}/{path.relative_to(root).as_posix()}"
                appid = _local_appid(key, apps)
            app = apps.get(appid)
            if app is None:
                name = names[folder].get(appid) or path.stem
                label = (folder.parent if kind else folder).name
                app = apps[appid] = MirrorApp(appid, name, label)
            if kind in app.paths or (app.paths and "" in {kind, *app.paths}):
                other = app.paths.get(kind) or next(iter(app.paths.values()))
                raise StageError(f"app {appid} twice: {other} and {path}; keep one of them")
            app.paths[kind] = path
    if not apps:
        listed = ", ".join(str(s) for s in sources)
        raise StageError(f"{listed}: no pictures ({', '.join(IMAGE_SUFFIXES)})")
    assert max(apps) <= MAX_APPID
    return [apps[appid] for appid in sorted(apps)]


def app_list_json(apps: list[MirrorApp]) -> bytes:
    """The body of Steam's ``ISteamApps/GetAppList/v2`` for these apps."""
    listed = [{"appid": app.appid, "name": app.name} for app in apps]
    return json.dumps({"applist": {"apps": listed}}).encode()


def apps_csv(apps: list[MirrorApp]) -> bytes:
    """``appid,name,label``: what ``appids.source: file`` reads (labels: the folders)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["appid", "name", "label"])
    writer.writerows([app.appid, app.name, app.label] for app in apps)
    return buffer.getvalue().encode()


class MirrorServer(ThreadingHTTPServer):
    """Serves the app list, apps.csv and ``/<appid>/<kind>.<ext>`` for every app."""

    daemon_threads = True

    def __init__(self, apps: list[MirrorApp], host: str = "127.0.0.1", port: int = 8000):
        self.apps = {app.appid: app for app in apps}
        self.app_list = app_list_json(apps)
        self.apps_csv = apps_csv(apps)
        self.requests_served = 0
        self._lock = threading.Lock()
        super().__init__((host, port), _MirrorHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def body(self, path: str) -> tuple[bytes, str] | None:
        """What a GET of ``path`` answers (body, content type), or None for a 404."""
        path = path.split("?", 1)[0]
        if path.rstrip("/") == APP_LIST_PATH.rstrip("/"):
            return self.app_list, "application/json"
        if path == APPS_CSV_PATH:
            return self.apps_csv, "text/csv"
        match = _IMAGE_PATH.match(path)
        if not match or match.group(2) not in BannerKind.__members__:
            return None
        kind = BannerKind(match.group(2))
        app = self.apps.get(int(match.group(1)))
        picture = app.picture(kind) if app and match.group(3) == kind.ext else None
        if picture is None:
            return None
        content_type = _CONTENT_TYPES.get(picture.suffix.lower(), "image/jpeg")
        try:
            return picture.read_bytes(), content_type
        except OSError:  # moved or deleted since the mirror started: as Steam's 404
            return None


class _MirrorHandler(BaseHTTPRequestHandler):
    server: MirrorServer

    def do_GET(self) -> None:
        answer = self.server.body(self.path)
        with self.server._lock:
            self.server.requests_served += 1
        if answer is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body, content_type = answer
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: one line per request would bury the download stage's own output."""
