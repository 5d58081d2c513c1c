"""A local stand-in for Steam's app-list API, SteamSpy and the image CDN, on 127.0.0.1.

It serves the real capsules in ``../shared/data/steam_capsules`` plus fixtures built from
them for every failure the curation stages must survive. Routes:

- ``/api/ISteamApps/GetAppList/v2/``: ``{"applist": {"apps": [...]}}``
- ``/steamspy/api.php?request=all&page=N``: ``{"<appid>": {...}}`` pages, then ``{}``
- ``/steamspy/api.php?request=tag&tag=NAME`` (``request=genre&genre=NAME``): every app
  whose ``tags`` in apps.csv hold NAME (genres: those tags that are Steam genres), in the
  same shape; ``[]`` for a name no app has, as SteamSpy answers
- ``/cdn/<appid>/capsule_184x69.jpg``: the image bytes, or the fixture's behaviour (the
  capsule is the only kind it has: any other kind is a 404)
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
from PIL import Image, ImageEnhance

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CAPSULES = SHARED / "data" / "steam_capsules"


@dataclass
class Route:
    """What the CDN answers for one app: a body, a status, or a sequence of failures first."""

    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    fail_first: list[tuple[int, dict]] = field(default_factory=list)  # (status, headers)
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # extra, e.g. Content-Encoding
    content_length: bool = True  # false: no Content-Length, the body ends when it hangs up
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


# Fixture app ids (above any real id in apps.csv) and what each must become.
FIXTURES = {
    9_000_001: "missing",  # 404
    9_000_002: "retry_after",  # 429 with Retry-After: 1, then the image
    9_000_003: "server_error",  # 500, then the image
    9_000_004: "html",  # an HTML page served as .jpg
    9_000_005: "truncated",  # the first half of a JPEG
    9_000_006: "rgba",  # an RGBA PNG
    9_000_007: "grayscale",  # a grayscale JPEG
    9_000_008: "blank",  # one flat colour
    9_000_009: "vignette",  # a picture inside a black frame
    9_000_010: "near_duplicate",  # a re-encoded, slightly brighter copy of a real capsule
    9_000_011: "slow",  # answers after a delay longer than the test's timeout
}


# Steam's genres: the fake's apps have a genre when their apps.csv tags name it.
GENRES = (
    "Action", "Adventure", "Casual", "Early Access", "Free to Play", "Indie",
    "Massively Multiplayer", "Racing", "RPG", "Simulation", "Sports", "Strategy",
)  # fmt: skip


def real_capsules() -> pd.DataFrame:
    return pd.read_csv(CAPSULES / "apps.csv", keep_default_na=False)


def fixture_routes(apps: pd.DataFrame, slow_s: float = 3.0) -> dict[int, Route]:
    """Routes for the fixture ids, made from real capsules so they look like Steam's.

    Each fixture that should pass validation uses its own mirrored capsule, so none of them
    is a near duplicate of another image by accident.
    """

    def capsule(index: int, mirrored: bool = True) -> Image.Image:
        im = Image.open(CAPSULES / apps["file"].iloc[index]).convert("RGB")
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else im

    framed = Image.new("RGB", capsule(0).size, (0, 0, 0))
    framed.paste(capsule(4).resize((framed.width - 40, framed.height - 20)), (20, 10))
    near = ImageEnhance.Brightness(capsule(1, mirrored=False)).enhance(1.03)
    truncated = jpeg(capsule(5))
    return {
        9_000_001: Route(status=404, body=b"Not Found", content_type="text/plain"),
        9_000_002: Route(body=jpeg(capsule(2)), fail_first=[(429, {"Retry-After": "1"})]),
        9_000_003: Route(body=jpeg(capsule(3)), fail_first=[(500, {})]),
        9_000_004: Route(body=b"<html><body>Oops</body></html>", content_type="text/html"),
        9_000_005: Route(body=truncated[: len(truncated) // 2]),
        9_000_006: Route(body=png(capsule(6).convert("RGBA")), content_type="image/png"),
        9_000_007: Route(body=jpeg(capsule(7).convert("L"))),
        9_000_008: Route(body=jpeg(Image.new("RGB", framed.size, (40, 90, 160)))),
        9_000_009: Route(body=jpeg(framed)),
        9_000_010: Route(body=jpeg(near, quality=75)),
        9_000_011: Route(body=jpeg(capsule(8)), delay_s=slow_s),
    }


# The real app that the near-duplicate fixture copies.
def near_duplicate_of(apps: pd.DataFrame) -> int:
    return int(apps["appid"].iloc[1])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up is part of the tests, not an error


class FakeSteam:
    """Start with ``with FakeSteam() as steam:``; ``steam.url`` is the base address."""

    def __init__(
        self,
        with_fixtures: bool = True,
        steamspy_page_size: int = 100,
        delay_s: float = 0.0,
        slow_s: float = 3.0,
    ):
        self.apps = real_capsules()
        self.routes: dict[int, Route] = {
            int(a): Route(body=(CAPSULES / f).read_bytes())
            for a, f in zip(self.apps["appid"], self.apps["file"], strict=True)
        }
        if with_fixtures:
            self.routes.update(fixture_routes(self.apps, slow_s))
        # each app's apps.csv tags ("|"-separated there); a fixture has none
        self.tags: dict[int, list[str]] = {
            int(a): [t for t in str(tags).split("|") if t]
            for a, tags in zip(self.apps["appid"], self.apps["tags"], strict=True)
        }
        self.page_size = steamspy_page_size
        self.delay_s = delay_s
        self.requests: Counter[str] = Counter()
        self.extra_apps: list[dict] = []  # appended to the app list as is (bad ids, say)
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"{self.url}/cdn"

    @property
    def app_list_url(self) -> str:
        return f"{self.url}/api/ISteamApps/GetAppList/v2/"

    @property
    def steamspy_url(self) -> str:
        return f"{self.url}/steamspy/api.php"

    def app_ids(self) -> list[int]:
        return sorted(self.routes)

    def __enter__(self) -> FakeSteam:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        steam = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def send(
                self, status: int, body: bytes, content_type: str, headers=None, route=None
            ) -> None:
                route = route or Route()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if route.content_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                for key, value in {**route.headers, **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not route.trickle_s:
                    self.wfile.write(body)
                    return
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    time.sleep(route.trickle_s)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                with steam._lock:
                    steam.requests[url.path] += 1
                    count = steam.requests[url.path]
                if url.path == "/api/ISteamApps/GetAppList/v2/":
                    apps = [{"appid": a, "name": steam.name(a)} for a in steam.routes]
                    # Steam's list is unsorted and has duplicates; the stage must cope.
                    apps = apps[::-1] + apps[:3] + steam.extra_apps
                    body = json.dumps({"applist": {"apps": apps}}).encode()
                    return self.send(200, body, "application/json")
                if url.path == "/steamspy/api.php":
                    query = parse_qs(url.query)
                    kind = query.get("request", ["all"])[0]
                    if kind in ("tag", "genre"):
                        ids = steam.apps_with(kind, query.get(kind, [""])[0])
                        data = {str(a): {"appid": a, "name": steam.name(a)} for a in ids}
                        body = json.dumps(data or []).encode()  # PHP's empty array
                        return self.send(200, body, "application/json")
                    page = int(query.get("page", ["0"])[0])
                    ids = sorted(steam.routes)[
                        page * steam.page_size : (page + 1) * steam.page_size
                    ]
                    data = {str(a): {"appid": a, "name": steam.name(a)} for a in ids}
                    return self.send(200, json.dumps(data).encode(), "application/json")
                parts = url.path.strip("/").split("/")
                if parts[:1] == ["cdn"] and len(parts) == 3 and parts[2] == "capsule_184x69.jpg":
                    return self.serve_image(int(parts[1]), count)
                self.send(404, b"no route", "text/plain")

            def serve_image(self, appid: int, count: int) -> None:
                route = steam.routes.get(appid)
                if route is None:
                    return self.send(404, b"Not Found", "text/plain")
                delay = route.delay_s or steam.delay_s
                if delay:
                    time.sleep(delay)
                if count <= len(route.fail_first):
                    status, headers = route.fail_first[count - 1]
                    return self.send(status, b"try later", "text/plain", headers)
                self.send(route.status, route.body, route.content_type, route=route)

        return Handler

    def apps_with(self, kind: str, name: str) -> list[int]:
        """The served apps SteamSpy lists for ``request=tag`` / ``request=genre`` NAME."""
        if kind == "genre" and name not in GENRES:
            return []
        return [a for a in sorted(self.routes) if name in self.tags.get(a, ())]

    def name(self, appid: int) -> str:
        match = self.apps.loc[self.apps["appid"] == appid, "name"]
        return str(match.iloc[0]) if len(match) else f"Fixture {appid}"
