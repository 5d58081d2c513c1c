"""Which apps to fetch: Steam's app list, SteamSpy's catalogue (or its lists of the apps
with given tags and genres), or a file of ids.

The table's ``labels`` column holds each app's labels as one string, names joined by "|"
(``pipeline.io.join_labels``): the requested tags and genres it has, in params order, or a
file's ``label`` cells; "" for none.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import requests

from pipeline.errors import StageError
from pipeline.http import offline_hint, short_error
from pipeline.io import join_labels, split_labels
from pipeline.params import AppidsParams
from pipeline.steam import parse_appid

COLUMNS = ("appid", "name", "source", "labels")
Row = tuple[int, str, str]  # appid, name, labels


def _get_json(session: requests.Session, url: str, timeout: float, **query) -> object:
    try:
        response = session.get(url, params=query or None, timeout=timeout)
    except requests.RequestException as exc:
        hint = offline_hint("appids.source=file and appids.file=<a CSV of appids>")
        raise StageError(f"GET {url}: {short_error(exc)}; {hint}") from None
    if response.status_code != 200:
        raise StageError(f"GET {response.url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise StageError(f"GET {response.url}: the answer is not JSON") from None


def fetch_steam_app_list(session: requests.Session, url: str, timeout: float = 60) -> pd.DataFrame:
    """Every app in Steam's ``ISteamApps/GetAppList/v2`` answer."""
    payload = _get_json(session, url, timeout)
    try:
        apps = payload["applist"]["apps"]  # type: ignore[index]
        entries = [(app["appid"], str(app.get("name") or "")) for app in apps]
    except (KeyError, TypeError, AttributeError):
        raise StageError(f"GET {url}: unexpected JSON, expected applist.apps[].appid") from None
    rows: list[Row] = []
    for index, (appid, name) in enumerate(entries):
        try:
            rows.append((parse_appid(appid), name, ""))
        except ValueError as exc:
            raise StageError(f"GET {url}: applist.apps[{index}].appid: {exc}") from None
    return _frame(rows, "steam")


def fetch_steamspy(
    session: requests.Session,
    url: str,
    delay_s: float = 60.0,
    max_pages: int = 1000,
    timeout: float = 60,
    on_page: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> pd.DataFrame:
    """SteamSpy's ``request=all`` pages (1,000 apps each), from page 0 until an empty one."""
    rows: list[Row] = []
    for page in range(max_pages):
        if page:
            sleep(delay_s)
        payload = _get_json(session, url, timeout, request="all", page=page)
        if not payload:
            break
        rows += [(appid, name, "") for appid, name in _steamspy_apps(payload, url, all=page)]
        if on_page:
            on_page(page, len(rows))
    return _frame(rows, "steamspy")


def _steamspy_apps(payload: object, url: str, **query: object) -> list[tuple[int, str]]:
    """(appid, name) of a SteamSpy list answer: an object keyed by app id (``[]``: none)."""
    asked = "&".join(f"request={k}&{k if k != 'all' else 'page'}={v}" for k, v in query.items())
    if isinstance(payload, list) and not payload:
        return []  # PHP's empty array: SteamSpy's answer for a tag no app has
    if not isinstance(payload, dict):
        raise StageError(f"GET {url}?{asked}: expected a JSON object")
    apps = []
    for key, value in payload.items():
        where = f"GET {url}?{asked}: key {key[:40]!r}"
        try:
            apps.append((parse_appid(key), str((value or {}).get("name") or "")))
        except ValueError as exc:
            raise StageError(f"{where}: {exc}") from None
        except (TypeError, AttributeError):
            raise StageError(f"{where}: unexpected JSON, expected an object") from None
    return apps


def fetch_steamspy_lists(
    session: requests.Session,
    url: str,
    tags: tuple[str, ...] = (),
    genres: tuple[str, ...] = (),
    delay_s: float = 1.0,
    timeout: float = 60,
    on_page: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> pd.DataFrame:
    """The union of SteamSpy's ``request=tag&tag=NAME`` and ``request=genre&genre=NAME``
    lists, each app labelled with the names whose lists hold it (tags, then genres, in the
    order given). A name no app has stops the stage: it is misspelt (names are the store's,
    case and spaces included)."""
    names: dict[int, str] = {}
    labels: dict[int, list[str]] = {}
    requests_ = [("tag", name) for name in tags] + [("genre", name) for name in genres]
    for number, (kind, name) in enumerate(requests_):
        if number:
            sleep(delay_s)
        payload = _get_json(session, url, timeout, request=kind, **{kind: name})
        apps = _steamspy_apps(payload, url, **{kind: name})
        if not apps:
            raise StageError(
                f"appids.{kind}s: SteamSpy lists no app with the {kind} {name!r}; spell it as "
                f"the Steam store does (case and spaces count, e.g. 'Pixel Graphics')"
            )
        for appid, app_name in apps:
            names[appid] = names.get(appid) or app_name
            labels.setdefault(appid, []).append(name)
        if on_page:
            on_page(number, len(names))
    rows = [(appid, names[appid], join_labels(labels[appid])) for appid in names]
    return _frame(rows, "steamspy")


def read_id_file(path: str | Path) -> pd.DataFrame:
    """App ids from a CSV with an ``appid`` column (``name`` and ``label`` optional) or one
    id per line.

    A ``label`` cell holds one label or several joined by "|"; an app listed on several
    rows gets the labels of them all. Blank lines and ``#`` comments are skipped; anything
    else that is not an id stops the stage with the file and line named.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"appids.file: {path} not found; point appids.file at a CSV or id list")
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    rows: list[Row] = []
    if "appid" in [cell.strip().lower() for cell in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if "appid" not in fields:
            raise StageError(f"{path}: the CSV header has no 'appid' column")
        for number, record in enumerate(reader, start=2):
            appid = _parse_id(record[fields["appid"]], path, number)
            label = join_labels(split_labels(_cell(record, fields, "label")))
            rows.append((appid, _cell(record, fields, "name"), label))
    else:
        for number, line in enumerate(lines, start=1):
            value = line.split("#", 1)[0].strip()
            if value:
                rows.append((_parse_id(value, path, number), "", ""))
    return _frame(rows, "file")


def _cell(record: dict, fields: dict, column: str) -> str:
    return (record.get(fields[column]) or "").strip() if column in fields else ""


def _parse_id(value: str | None, path: Path, line: int) -> int:
    try:
        return parse_appid((value or "").strip())
    except ValueError as exc:
        raise StageError(f"{path}:{line}: {exc}") from None


def _frame(rows: list[Row], source: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["appid", "name", "labels"])
    df = df.astype({"appid": "int64", "name": "str", "labels": "str"})
    df["source"] = source
    return df[list(COLUMNS)]


def select_appids(df: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """Unique ids in ascending order (a named duplicate wins over a nameless one, and the
    labels of every duplicate are kept, in order), first N."""
    merged = df.groupby("appid", sort=False)["labels"].agg(
        lambda cells: join_labels(name for cell in cells for name in split_labels(cell))
    )
    df = df.assign(_nameless=df["name"].eq(""))
    df = df.sort_values(["appid", "_nameless"], kind="stable").drop_duplicates("appid")
    df = df.drop(columns="_nameless").reset_index(drop=True)
    df["labels"] = df["appid"].map(merged).astype(str)
    return df.head(limit) if limit else df


def collect_appids(
    params: AppidsParams,
    session: requests.Session,
    on_page: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The ``appids`` stage's table (appid, name, source, labels) for the configured source."""
    if params.source == "steam":
        df = fetch_steam_app_list(session, params.steam_api_url, params.timeout_s)
    elif params.label_names:
        df = fetch_steamspy_lists(
            session,
            params.steamspy_url,
            params.tags,
            params.genres,
            params.steamspy_request_delay_s,
            params.timeout_s,
            on_page,
        )
    elif params.source == "steamspy":
        df = fetch_steamspy(
            session,
            params.steamspy_url,
            params.steamspy_delay_s,
            params.steamspy_max_pages,
            params.timeout_s,
            on_page,
        )
    else:
        if not params.file:
            raise StageError("appids.file: required when appids.source is 'file'")
        df = read_id_file(params.file)
    if df.empty:
        # Download would take an empty list as "every app was delisted"; stop here instead.
        where = params.file if params.source == "file" else f"the {params.source} source"
        raise StageError(
            f"{where} gave 0 apps (an empty or failed answer?); the previous app list is kept"
        )
    return select_appids(df, params.limit)
