"""``steamgan mirror SRC...``: serve folders of pictures as Steam's app list and CDN, so the
whole pipeline runs offline or on your own images (docs/offline.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from stages.common import one_line_errors, say

SourcesArgument = Annotated[
    list[Path], typer.Argument(help="Folders (searched recursively) or pictures to serve.")
]


def mirror(
    sources: SourcesArgument,
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port; 0: any free one."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Serve pictures as Steam does, in the foreground until Ctrl-C: the app list at
    /ISteamApps/GetAppList/v2/ (appids.steam_api_url), each picture at /<appid>/<kind>.<ext>
    for any kind (download.cdn_url), and /apps.csv (appid,name,label: the folder)."""
    from pipeline.errors import StageError
    from pipeline.mirror import APP_LIST_PATH, MirrorServer, collect_apps

    with one_line_errors("mirror"):
        apps = collect_apps(sources)
        try:
            server = MirrorServer(apps, host, port)
        except OSError as exc:
            raise StageError(f"{host}:{port}: {exc.strerror}; pick another --port") from None
        folders = Counter(app.label for app in apps)
        listed = ", ".join(f"{name} {n:,}" for name, n in folders.most_common())
        say(f"mirror: {len(apps):,} pictures ({listed}) at {server.url}")
        say(
            f"mirror: params: appids.steam_api_url={server.url}{APP_LIST_PATH} "
            f"download.cdn_url={server.url} (params.offline.yaml has them for port 8000); "
            "Ctrl-C stops"
        )
        with server:
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                say(f"mirror: stopped after {server.requests_served:,} requests")
