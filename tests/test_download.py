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
from pipeline.http import RateLimiter, make_session
from pipeline.params import DownloadParams
from pipeline.steam import BannerKind
from tests.conftest import REPO, run_cli, set_args, steam_overrides
from tests.fake_steam import FakeSteam


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
    ]
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
    manifest = run_download(steam, ids[:3], tmp_path, kind=BannerKind.header)
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
    assert "offline? set download.cdn_url=" in last and "Run it offline" in last
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
