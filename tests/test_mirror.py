"""``steamgan mirror``: folders of pictures served as Steam's app list and CDN, and the
curation stages running on it unchanged (the offline recipe's first half)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import requests
from PIL import Image

from pipeline.appids import read_id_file
from pipeline.errors import StageError
from pipeline.mirror import APP_LIST_PATH, FIRST_LOCAL_APPID, MirrorServer, collect_apps
from pipeline.steam import BannerKind
from tests.conftest import REPO, needs_shared, run_cli, set_args
from tests.images import save


@contextmanager
def serving(sources: list[Path]) -> Iterator[MirrorServer]:
    server = MirrorServer(collect_apps(sources), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def picture(path: Path, colour: str = "red", size=(64, 48)) -> Path:
    return save(Image.new("RGB", size, colour), path)


@pytest.fixture
def own_pictures(tmp_path) -> Path:
    """A user's folder: classes in sub-folders with numbered files, a Steam CDN-layout app
    with two kinds, and capsules named by appid with an apps.csv, as ../shared's are."""
    root = tmp_path / "pictures"
    picture(root / "cats" / "001.png", "orange")
    picture(root / "dogs" / "001.png", "brown")
    picture(root / "dogs" / "002.jpg", "black")
    picture(root / "cdn" / "570" / "header.jpg", "blue", (460, 215))
    picture(root / "cdn" / "570" / "capsule_184x69.jpg", "green", (184, 69))
    picture(root / "capsules" / "10.jpg", "white", (184, 69))
    (root / "capsules" / "apps.csv").write_text("appid,name\n10,Counter-Strike\n")
    picture(root / ".cache" / "hidden.png")  # hidden folders are not served
    (root / "notes.txt").write_text("not a picture")
    return root


def test_ids_are_steams_where_the_layout_says_so_and_stable_elsewhere(own_pictures):
    apps = {app.appid: app for app in collect_apps([own_pictures])}
    assert apps[10].name == "Counter-Strike" and apps[10].label == "capsules"
    assert set(apps[570].paths) == {"header", "capsule_184x69"} and apps[570].label == "cdn"
    local = {
        app.paths[""].relative_to(own_pictures).as_posix(): app
        for app in apps.values()
        if app.appid >= FIRST_LOCAL_APPID
    }
    # numbered files are not taken for Steam ids: 001.png twice is two local apps
    assert set(local) == {"cats/001.png", "dogs/001.png", "dogs/002.jpg"}
    assert set(apps) == {10, 570, *(app.appid for app in local.values())}
    assert apps[10].picture(BannerKind.library_hero) == own_pictures / "capsules/10.jpg"
    assert {app.label for app in local.values()} == {"cats", "dogs"}
    again = {app.appid for app in collect_apps([own_pictures])}
    assert again == set(apps)  # the same ids every time
    # a new picture leaves the others' ids as they were
    picture(own_pictures / "cats" / "000.png")
    assert set(apps) < {app.appid for app in collect_apps([own_pictures])}


def test_a_steam_id_claimed_twice_names_both_files(own_pictures, tmp_path):
    other = picture(tmp_path / "more" / "570" / "header.jpg")
    with pytest.raises(StageError, match=r"app 570 twice: .*header.jpg and .*more/570/header"):
        collect_apps([own_pictures, tmp_path / "more"])
    with pytest.raises(StageError, match="no such folder"):
        collect_apps([tmp_path / "nowhere"])
    other.unlink()
    with pytest.raises(StageError, match="no pictures"):
        collect_apps([tmp_path / "more"])


def test_server_answers_as_steam_does(own_pictures, tmp_path):
    with serving([own_pictures]) as server:
        listed = requests.get(server.url + APP_LIST_PATH, timeout=5).json()["applist"]["apps"]
        ids = [app["appid"] for app in listed]
        assert ids[:2] == [10, 570] and len(ids) == 5
        get = lambda path: requests.get(server.url + path, timeout=5)  # noqa: E731
        # a picture outside the CDN layout answers for any kind, bytes untouched
        dog = next(a for a in server.apps.values() if a.paths.get("", Path()).name == "002.jpg")
        for kind in ("capsule_184x69", "library_600x900"):
            answer = get(f"/{dog.appid}/{kind}.jpg")
            assert answer.status_code == 200 and answer.content == dog.paths[""].read_bytes()
        # a CDN-layout app has the kinds it has, and no other, as Steam
        assert get("/570/header.jpg").content == (own_pictures / "cdn/570/header.jpg").read_bytes()
        assert get("/570/library_hero.jpg").status_code == 404
        assert get("/570/logo.jpg").status_code == 404  # logos are .png on Steam
        assert get("/999/header.jpg").status_code == 404
        assert get("/570/nonsense.jpg").status_code == 404
        # apps.csv: what appids.source file reads, a label per folder
        (tmp_path / "apps.csv").write_bytes(get("/apps.csv").content)
        table = read_id_file(tmp_path / "apps.csv").set_index("appid")
        assert table.loc[10, "name"] == "Counter-Strike"
        assert table.loc[dog.appid, "labels"] == "dogs"


def test_appids_and_download_stages_run_on_the_mirror(params_file):
    """The offline params (appids from the mirror's app list, the CDN from the mirror, any
    size) take the shared faces through appids, download and validate unchanged."""
    faces = needs_shared("data", "faces")
    offline = run_cli("set-args", str(REPO / "params.offline.yaml")).output.split()
    with serving([faces]) as server:
        here = set_args(
            [
                f"appids.steam_api_url={server.url}{APP_LIST_PATH}",
                f"download.cdn_url={server.url}",
            ]
        )
        for stage in ("appids", "download", "validate"):
            result = run_cli(stage, *offline, *here)
            assert result.exit_code == 0, result.output
    pictures = sorted(p for p in faces.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    manifest = pd.read_parquet("data/download/manifest.parquet")
    assert len(manifest) == len(pictures) and (manifest["status"] == "ok").all()
    assert sorted(manifest["sha256"]) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in pictures
    )
    accepted = pd.read_parquet("data/validate/accepted.parquet")
    rejected = pd.read_parquet("data/validate/rejected.parquet")
    assert len(accepted) + len(rejected) == len(pictures)
    assert "wrong_size" not in set(rejected["reason"])  # any size: expected_size null
    assert len(accepted) >= 0.8 * len(pictures)


def test_command_serves_in_the_foreground_until_interrupted(own_pictures):
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.cli", "mirror", str(own_pictures), "--port", "0"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stderr.readline()
        assert first.startswith("mirror: 5 pictures (") and " at http://127.0.0.1:" in first
        url = first.rsplit(" at ", 1)[1].strip()
        assert requests.get(url + APP_LIST_PATH, timeout=5).status_code == 200
        assert "download.cdn_url=" + url in process.stderr.readline()
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=10)
    assert process.returncode == 0 and "mirror: stopped after 1 requests" in rest


def test_a_port_in_use_is_one_line(own_pictures):
    with serving([own_pictures]) as server:
        port = server.server_address[1]
        result = run_cli("mirror", str(own_pictures), "--port", str(port))
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(f"steamgan mirror: error: 127.0.0.1:{port}: ")
    )
    assert result.output.strip().endswith("pick another --port")


def test_set_args_merges_files_the_later_one_winning(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("resize:\n  size: 64\n  mode: crop\n")
    second.write_text("resize:\n  size: 32\ntrain:\n  image_size: 32\n")
    result = run_cli("set-args", str(first), str(second))
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        "-S", "resize.mode=crop", "-S", "resize.size=32", "-S", "train.image_size=32",
    ]  # fmt: skip
