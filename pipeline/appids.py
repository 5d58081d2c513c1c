"""Which apps to fetch: Steam's app list, SteamSpy's catalogue, or a file of ids."""

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
from pipeline.params import AppidsParams
from pipeline.steam import parse_appid

COLUMNS = ("appid", "name", "source")


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
    rows = []
    for index, (appid, name) in enumerate(entries):
        try:
            rows.append((parse_appid(appid), name))
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
    rows: list[tuple[int, str]] = []
    for page in range(max_pages):
        if page:
            sleep(delay_s)
        payload = _get_json(session, url, timeout, request="all", page=page)
        if not payload:
            break
        if not isinstance(payload, dict):
            raise StageError(f"GET {url}?request=all&page={page}: expected a JSON object")
        for key, value in payload.items():
            where = f"GET {url}?request=all&page={page}: key {key[:40]!r}"
            try:
                rows.append((parse_appid(key), str((value or {}).get("name") or "")))
            except ValueError as exc:
                raise StageError(f"{where}: {exc}") from None
            except (TypeError, AttributeError):
                raise StageError(f"{where}: unexpected JSON, expected an object") from None
        if on_page:
            on_page(page, len(rows))
    return _frame(rows, "steamspy")


def read_id_file(path: str | Path) -> pd.DataFrame:
    """App ids from a CSV with an ``appid`` column (``name`` optional) or one id per line.

    Blank lines and ``#`` comments are skipped; anything else that is not an id stops the
    stage with the file and line named.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"appids.file: {path} not found; point appids.file at a CSV or id list")
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    rows: list[tuple[int, str]] = []
    if "appid" in [cell.strip().lower() for cell in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if "appid" not in fields:
            raise StageError(f"{path}: the CSV header has no 'appid' column")
        for number, record in enumerate(reader, start=2):
            rows.append((_parse_id(record[fields["appid"]], path, number), _name(record, fields)))
    else:
        for number, line in enumerate(lines, start=1):
            value = line.split("#", 1)[0].strip()
            if value:
                rows.append((_parse_id(value, path, number), ""))
    return _frame(rows, "file")


def _name(record: dict, fields: dict) -> str:
    return (record.get(fields["name"]) or "").strip() if "name" in fields else ""


def _parse_id(value: str | None, path: Path, line: int) -> int:
    try:
        return parse_appid((value or "").strip())
    except ValueError as exc:
        raise StageError(f"{path}:{line}: {exc}") from None


def _frame(rows: list[tuple[int, str]], source: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["appid", "name"]).astype({"appid": "int64", "name": "str"})
    df["source"] = source
    return df


def select_appids(df: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """Unique ids in ascending order (a named duplicate wins over a nameless one), first N."""
    df = df.assign(_nameless=df["name"].eq(""))
    df = df.sort_values(["appid", "_nameless"], kind="stable").drop_duplicates("appid")
    df = df.drop(columns="_nameless").reset_index(drop=True)
    return df.head(limit) if limit else df


def collect_appids(
    params: AppidsParams,
    session: requests.Session,
    on_page: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The ``appids`` stage's table (appid, name, source) for the configured source."""
    if params.source == "steam":
        df = fetch_steam_app_list(session, params.steam_api_url, params.timeout_s)
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
