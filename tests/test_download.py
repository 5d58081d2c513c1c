import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.download import Status, download_images, plan_downloads
from pipeline.errors import StageError
from pipeline.http import RateLimiter, make_session
from pipeline.params import DownloadParams
from pipeline.steam import BannerKind
from tests.conftest import REPO, run_cli, set_args, steam_overrides
from tests.fake_steam import FakeSteam, Route


def params_for(steam: FakeSteam, **changes) -> DownloadParams:
    settings = dict(
        kind=BannerKind.capsule_184x69,
        cdn_url=steam.cdn_url,
        workers=8,
        timeout_s=1.0,
        retries=2,
        backoff_s=0.05,
        rate_per_s=None,
    )
    settings.update(changes)
    return DownloadParams(**settings)


def run_download(steam, appids, out, **changes) -> pd.DataFrame:
    params = params_for(steam, **changes)
    manifest = out / "manifest.parquet"
    plan = plan_downloads(appids, params, manifest)
    return download_images(plan, params, out / "images", manifest)


def test_labels_come_from_the_current_app_list(steam, tmp_path):
    """Each app's labels go into the manifest; a re-run takes the new list's labels (even
    for images it does not fetch again), and a delisted app has none."""
    first, second, third = steam.app_ids()[:3]
    params = params_for(steam)
    manifest_path = tmp_path / "manifest.parquet"

    def run(labels: dict[int, str]) -> pd.DataFrame:
        plan = plan_downloads(labels, params, manifest_path)
        return download_images(plan, params, tmp_path / "images", manifest_path, labels=labels)

    run({first: "Anime", second: "Anime|Horror", third: ""})
    manifest = run({first: "Horror", second: "Anime|Horror"}).set_index("appid")
    assert manifest["labels"].to_dict() == {first: "Horror", second: "Anime|Horror", third: ""}
    assert manifest.loc[third, "status"] == Status.delisted
    assert pd.read_parquet(manifest_path).equals(manifest.reset_index())


def cdn_requests(steam: FakeSteam, appid: int) -> int:
    return steam.requests[f"/cdn/{appid}/capsule_184x69.jpg"]


def test_every_fixture_gets_its_status(steam, tmp_path):
    ids = steam.app_ids()
    manifest = run_download(steam, ids, tmp_path).set_index("appid")
    assert list(manifest.reset_index().columns) == [
        "appid",
        "kind",
        "url",
        "status",
        "http_status",
        "bytes",
        "sha256",
        "error",
        "path",
        "labels",
    ]
    assert (manifest["labels"] == "").all()  # an app list without labels
    status = manifest["status"]
    assert status[9_000_001] == Status.missing and manifest.loc[9_000_001, "http_status"] == 404
    assert status[9_000_004] == Status.invalid and "text/html" in manifest.loc[9_000_004, "error"]
    assert status[9_000_011] == Status.error and "timed out" in manifest.loc[9_000_011, "error"]
    # 429 with Retry-After and 500 are retried, then succeed
    assert status[9_000_002] == status[9_000_003] == Status.ok
    assert cdn_requests(steam, 9_000_002) == cdn_requests(steam, 9_000_003) == 2
    assert (status.drop([9_000_001, 9_000_004, 9_000_011]) == Status.ok).all()
    # what was saved is exactly what was served; nothing else is in the folder
    images = tmp_path / "images"
    saved = {p.name for p in images.iterdir()}
    assert saved == {f"{a}.jpg" for a in manifest.index[status == Status.ok]}
    for appid, row in manifest[status == Status.ok].iterrows():
        body = steam.routes[appid].body
        assert Path(row["path"]).read_bytes() == body
        assert row["sha256"] == hashlib.sha256(body).hexdigest() and row["bytes"] == len(body)
        assert row["url"] == f"{steam.cdn_url}/{appid}/capsule_184x69.jpg"


def test_retry_after_is_honoured(steam, tmp_path):
    start = time.monotonic()
    manifest = run_download(steam, [9_000_002], tmp_path)
    assert manifest["status"].tolist() == ["ok"]
    assert time.monotonic() - start >= 0.95  # the server asked for one second


def test_persistent_429_is_an_error_with_status(steam, tmp_path):
    steam.routes[9_000_002].fail_first = [(429, {"Retry-After": "0"})] * 10
    manifest = run_download(steam, [9_000_002], tmp_path, retries=1)
    row = manifest.iloc[0]
    assert row["status"] == "error" and row["http_status"] == 429 and row["error"] == "HTTP 429"
    assert not (tmp_path / "images" / "9000002.jpg").exists()


def test_second_run_fetches_nothing_settled(steam, tmp_path):
    ids = [*steam.app_ids()[:20], 9_000_001, 9_000_011]
    first = run_download(steam, ids, tmp_path)
    before = dict(steam.requests)
    second = run_download(steam, ids, tmp_path)
    asked = {path for path, n in steam.requests.items() if n != before.get(path, 0)}
    # only the timed-out one is asked again: ok images and 404s stand
    assert asked == {"/cdn/9000011/capsule_184x69.jpg"}
    pd.testing.assert_frame_equal(first, second)


def test_retry_missing_asks_again(steam, tmp_path):
    run_download(steam, [9_000_001], tmp_path)
    run_download(steam, [9_000_001], tmp_path, retry_missing=True)
    assert cdn_requests(steam, 9_000_001) == 2


def test_timed_out_image_succeeds_on_a_patient_rerun(steam, tmp_path):
    steam.routes[9_000_011].delay_s = 1.5
    first = run_download(steam, [9_000_011], tmp_path, retries=0)
    assert first["status"].tolist() == ["error"]
    second = run_download(steam, [9_000_011], tmp_path, timeout_s=5)
    assert second["status"].tolist() == ["ok"]


def test_changed_kind_is_fetched_again_and_dropped_apps_are_pruned(steam, tmp_path):
    ids = steam.app_ids()[:6]
    run_download(steam, ids, tmp_path)
    manifest = run_download(steam, ids[:3], tmp_path, kind=BannerKind.header, prune=True)
    # the fake CDN only has capsules: every header is missing, and no stale file survives
    assert manifest["status"].tolist() == ["missing"] * 3
    assert list((tmp_path / "images").iterdir()) == []


def test_rate_limit_spaces_request_starts():
    limiter = RateLimiter(20.0)
    start = time.monotonic()
    for _ in range(11):
        limiter.wait()
    assert time.monotonic() - start >= 0.49  # 10 intervals of 50 ms


def test_rate_limited_download(steam, tmp_path):
    start = time.monotonic()
    run_download(steam, steam.app_ids()[:11], tmp_path, rate_per_s=20.0)
    assert time.monotonic() - start >= 0.49


def test_session_retries_then_returns_last_answer(steam):
    steam.routes[9_000_003].fail_first = [(503, {})] * 3
    session = make_session(retries=2, backoff_s=0.01)
    response = session.get(f"{steam.cdn_url}/9000003/capsule_184x69.jpg", timeout=2)
    assert response.status_code == 503 and cdn_requests(steam, 9_000_003) == 3


def test_stage_writes_manifest_images_and_summary(steam, params_file):
    overrides = set_args(steam_overrides(steam))
    assert run_cli("appids", *overrides, "-S", "appids.limit=12").exit_code == 0
    result = run_cli("download", *overrides)
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet("data/download/manifest.parquet")
    assert len(manifest) == 12 and (manifest["status"] == "ok").all()
    summary = pd.read_json("data/download/summary.json", typ="series")
    assert summary["ok"] == 12 and summary["total"] == 12
    assert len(os.listdir("data/download/images")) == 12


def test_stage_where_every_download_failed_exits_non_zero_naming_the_cause(steam, params_file):
    overrides = set_args(steam_overrides(steam))
    assert run_cli("appids", *overrides, "-S", "appids.limit=5").exit_code == 0
    unreachable = ["-S", "download.cdn_url=http://127.0.0.1:9/steam", "-S", "download.retries=0"]
    result = run_cli("download", *overrides, *unreachable)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        "steamgan download: error: no image downloaded: all 5 failed, 5 with ConnectionError: "
    )
    assert "offline? set download.cdn_url=" in last and "docs/offline.md" in last
    manifest = pd.read_parquet("data/download/manifest.parquet")  # recorded, not lost
    assert len(manifest) == 5 and (manifest["status"] == "error").all()
    # a server that answers, with nothing under that kind: the same, with what to check
    result = run_cli("download", *overrides, "-S", f"download.cdn_url={steam.url}/nowhere")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "steamgan download: error: no image downloaded: all 5 failed, 5 with missing; "
        "check download.cdn_url and download.kind"
    )


def test_stage_without_appids_says_what_to_run(params_file):
    result = run_cli("download")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "steamgan download: error: data/appids/appids.parquet: not found; "
        "run the 'appids' stage first (dvc repro appids)"
    )


@pytest.mark.slow
def test_kill_9_then_rerun_loses_nothing(capsules, params_file):
    """kill -9 the download stage mid-run; the re-run completes with no partial file."""
    with FakeSteam(with_fixtures=False, delay_s=0.05) as steam:
        overrides = [*steam_overrides(steam, timeout_s=5), "download.workers=4"]
        assert run_cli("appids", *set_args(overrides)).exit_code == 0
        total = len(steam.app_ids())
        images = Path("data/download/images")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "stages.download", *set_args(overrides)]
        proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = [p for p in images.glob("*.jpg")] if images.exists() else []
            if len(done) >= total // 4:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = {p.name for p in images.glob("*.jpg")}
        assert 0 < len(finished) < total, "the kill came too early or too late to test resume"
        # whatever has its final name is complete, byte for byte
        for name in finished:
            assert (images / name).read_bytes() == steam.routes[int(name[:-4])].body
        assert not Path("data/download/manifest.parquet").exists()
        journal = Path("data/download/manifest.journal.jsonl")
        assert journal.exists()
        before = dict(steam.requests)

        rerun = subprocess.run(command, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        manifest = pd.read_parquet("data/download/manifest.parquet")
        assert len(manifest) == total and (manifest["status"] == "ok").all()
        assert not journal.exists()
        assert sorted(p.name for p in images.iterdir()) == sorted(
            f"{a}.jpg" for a in steam.app_ids()
        )
        for appid, path in zip(manifest["appid"], manifest["path"], strict=True):
            assert Path(path).read_bytes() == steam.routes[appid].body
        # the journal spared the re-run most of what finished before the kill
        asked_again = [p for p, n in steam.requests.items() if n > before.get(p, 0)]
        assert len(asked_again) <= total - len(finished) + 4 * 2


def test_delisted_apps_keep_their_images_and_are_marked(steam, tmp_path):
    ids = steam.app_ids()[:6]
    first = run_download(steam, ids, tmp_path)
    manifest = run_download(steam, ids[:4], tmp_path).set_index("appid")
    assert manifest.loc[ids[:4], "status"].tolist() == ["ok"] * 4
    assert manifest.loc[ids[4:], "status"].tolist() == ["delisted"] * 2
    for appid in ids:  # every image is still there, byte for byte
        assert Path(manifest.loc[appid, "path"]).read_bytes() == steam.routes[appid].body
    # listed again: ok from disk, not fetched again
    before = dict(steam.requests)
    again = run_download(steam, ids, tmp_path)
    assert steam.requests == before
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.parametrize("listed", [0, 2])
def test_an_empty_or_halved_app_list_is_refused(steam, tmp_path, listed):
    ids = steam.app_ids()[:6]
    run_download(steam, ids, tmp_path)
    params = params_for(steam)
    with pytest.raises(
        StageError, match=f"the app list has {listed} apps, the last download had 6"
    ):
        plan_downloads(ids[:listed], params, tmp_path / "manifest.parquet")
    assert len(list((tmp_path / "images").iterdir())) == 6
    # the user says the apps really left: with prune they go
    run_download(steam, ids[:listed], tmp_path, allow_shrink=True, prune=True)
    assert len(list((tmp_path / "images").iterdir())) == listed


def test_stage_refuses_an_empty_app_list_and_keeps_the_images(steam, params_file):
    overrides = set_args(steam_overrides(steam))
    assert run_cli("appids", *overrides, "-S", "appids.limit=5").exit_code == 0
    assert run_cli("download", *overrides).exit_code == 0
    pd.DataFrame({"appid": pd.Series([], dtype="int64")}).to_parquet("data/appids/appids.parquet")
    result = run_cli("download", *overrides)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "the app list has 0 apps, the last download had 5" in result.output
    assert len(os.listdir("data/download/images")) == 5


def big_jpeg(steam: FakeSteam, size: int) -> bytes:
    """A real capsule padded to ``size`` bytes: its header sniffs as a JPEG."""
    body = steam.routes[steam.app_ids()[0]].body
    return body + b"\0" * (size - len(body))


@pytest.mark.parametrize("content_length", [True, False])
def test_a_body_over_max_bytes_is_refused_and_not_kept(steam, tmp_path, content_length):
    appid = steam.app_ids()[0]
    steam.routes[appid] = Route(body=big_jpeg(steam, 3_000_000), content_length=content_length)
    manifest = run_download(steam, [appid], tmp_path, max_bytes=200_000)
    row = manifest.iloc[0]
    assert row["status"] == "invalid" and "download.max_bytes (200,000 bytes" in row["error"]
    if content_length:
        assert row["error"].startswith("Content-Length 3,000,000 is over")
    assert list((tmp_path / "images").iterdir()) == []


def test_a_gzip_bomb_is_measured_decoded(steam, tmp_path):
    appid = steam.app_ids()[0]
    bomb = gzip.compress(big_jpeg(steam, 50_000_000), compresslevel=9)
    assert len(bomb) < 100_000  # small on the wire
    steam.routes[appid] = Route(body=bomb, headers={"Content-Encoding": "gzip"})
    manifest = run_download(steam, [appid], tmp_path, max_bytes=1_000_000)
    row = manifest.iloc[0]
    assert row["status"] == "invalid" and "decoded" in row["error"]
    assert list((tmp_path / "images").iterdir()) == []


def test_a_gzipped_image_under_the_cap_is_stored_decoded(steam, tmp_path):
    appid = steam.app_ids()[0]
    body = steam.routes[appid].body
    steam.routes[appid] = Route(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    manifest = run_download(steam, [appid], tmp_path)
    assert manifest["status"].tolist() == ["ok"]
    assert Path(manifest["path"].iloc[0]).read_bytes() == body


def test_a_trickling_server_is_cut_at_the_deadline(steam, tmp_path):
    appid = steam.app_ids()[0]
    steam.routes[appid].trickle_s = 0.1  # every read gets a byte well within timeout_s
    start = time.monotonic()
    manifest = run_download(steam, [appid], tmp_path, timeout_s=1.0, deadline_s=1.5)
    elapsed = time.monotonic() - start
    row = manifest.iloc[0]
    assert row["status"] == "error" and "download.deadline_s (1.5 s)" in row["error"]
    assert elapsed < 4, elapsed
    assert list((tmp_path / "images").iterdir()) == []


@pytest.mark.parametrize("header", ["-5", "soon"])
def test_a_bad_retry_after_counts_as_no_header(steam, tmp_path, header):
    steam.routes[9_000_002].fail_first = [(429, {"Retry-After": header})]
    manifest = run_download(steam, [9_000_002], tmp_path)
    assert manifest["status"].tolist() == ["ok"] and cdn_requests(steam, 9_000_002) == 2


def test_ctrl_c_stops_a_download_within_a_second(capsules, params_file):
    with FakeSteam(with_fixtures=False) as steam:
        for route in steam.routes.values():
            route.trickle_s = 0.5
        overrides = [*steam_overrides(steam, timeout_s=5), "download.workers=4"]
        assert run_cli("appids", *set_args(overrides), "-S", "appids.limit=8").exit_code == 0
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "stages.download", *set_args(overrides)]
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sum(steam.requests.values()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # the four workers are inside trickling requests
        assert sum(steam.requests.values()) >= 5
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
        print(f"Ctrl-C to exit: {elapsed:.2f} s")
        assert proc.returncode == 130, stderr
        assert "interrupted; run it again to resume" in stderr
        assert elapsed < 3  # the stage stops in ~0.1 s; the rest is interpreter exit
