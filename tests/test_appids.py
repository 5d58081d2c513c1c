import pandas as pd
import pytest

from pipeline.appids import collect_appids, read_id_file, select_appids
from pipeline.errors import StageError
from pipeline.http import make_session
from pipeline.params import AppidsParams
from pipeline.steam import parse_appid
from tests.conftest import run_cli, set_args, steam_overrides


def test_steam_source_sorted_unique_and_named(steam):
    params = AppidsParams(source="steam", steam_api_url=steam.app_list_url)
    table = collect_appids(params, make_session(retries=1))
    assert list(table.columns) == ["appid", "name", "source"]
    assert table["appid"].tolist() == steam.app_ids()  # duplicates in the answer removed
    assert table["appid"].is_monotonic_increasing
    assert (table["source"] == "steam").all()
    named = table.set_index("appid")["name"]
    assert named[570] == "Dota 2"


def test_steamspy_pages_until_empty(steam):
    params = AppidsParams(source="steamspy", steamspy_url=steam.steamspy_url, steamspy_delay_s=0)
    pages = []
    table = collect_appids(params, make_session(retries=1), on_page=lambda p, n: pages.append(p))
    assert table["appid"].tolist() == steam.app_ids()
    assert pages == list(range(-(-len(steam.app_ids()) // steam.page_size)))
    assert steam.requests["/steamspy/api.php"] == len(pages) + 1  # the last, empty page


def test_limit_keeps_first_ids_ascending(steam):
    params = AppidsParams(steam_api_url=steam.app_list_url, limit=5)
    table = collect_appids(params, make_session(retries=1))
    assert table["appid"].tolist() == steam.app_ids()[:5]


def test_id_file_plain_with_comments_and_duplicates(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# my list\n570\n\n10  # Counter-Strike\n570\n")
    table = select_appids(read_id_file(path))
    assert table["appid"].tolist() == [10, 570]


def test_id_file_csv_keeps_names(tmp_path):
    path = tmp_path / "apps.csv"
    path.write_text("appid,name\n570,Dota 2\n10,\n10,Counter-Strike\n")
    table = select_appids(read_id_file(path))
    assert table.to_dict("list") == {
        "appid": [10, 570],
        "name": ["Counter-Strike", "Dota 2"],
        "source": ["file", "file"],
    }


def test_shared_apps_csv_reads_as_id_file(capsules):
    table = read_id_file(capsules / "apps.csv")
    assert len(table) == len(pd.read_csv(capsules / "apps.csv"))


@pytest.mark.parametrize("content", ["570\nabc\n", "appid\n570\n-3\n"])
def test_bad_id_names_file_and_line(tmp_path, content):
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(StageError, match=rf"{path.name}:[23]: .* is not an app id"):
        read_id_file(path)


def test_http_error_is_one_line(steam):
    params = AppidsParams(steam_api_url=steam.url + "/nowhere")
    with pytest.raises(StageError, match=r"GET .*/nowhere: HTTP 404"):
        collect_appids(params, make_session(retries=0))


def test_stage_writes_parquet(steam, params_file):
    result = run_cli("appids", *set_args(steam_overrides(steam)), "-S", "appids.limit=7")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet("data/appids/appids.parquet")
    assert table["appid"].tolist() == steam.app_ids()[:7]


def test_stage_without_network_fails_in_one_line(params_file):
    result = run_cli(
        "appids", "-S", "appids.steam_api_url=http://127.0.0.1:9/x", "-S", "appids.retries=0"
    )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last == (
        "steamgan appids: error: GET http://127.0.0.1:9/x: "
        "ConnectionError: [Errno 111] Connection refused; offline? set appids.source=file and "
        'appids.file=<a CSV of appids>, or use params.offline.yaml (README "Run it offline")'
    )


@pytest.mark.parametrize("value", [1, "1", " 570 ", 2**32 - 1, str(2**32 - 1)])
def test_app_ids_that_are_accepted(value):
    assert parse_appid(value) == int(value)


@pytest.mark.parametrize(
    "value", [0, -5, "-5", 2**32, 2**63, str(2**63), True, 3.7, 3.0, "3.7", "", "٣", None, [1]]
)
def test_app_ids_that_are_refused(value):
    with pytest.raises(ValueError, match="is not an app id"):
        parse_appid(value)


@pytest.mark.parametrize("bad", [-5, 0, True, 3.7, 2**63])
def test_steam_source_refuses_a_bad_id_naming_it(steam, bad):
    steam.extra_apps = [{"appid": bad, "name": "evil"}]
    params = AppidsParams(source="steam", steam_api_url=steam.app_list_url)
    with pytest.raises(StageError, match=r"applist\.apps\[\d+\]\.appid: .* is not an app id"):
        collect_appids(params, make_session(retries=1))


def test_id_file_refuses_an_id_over_32_bits(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text(f"570\n{2**63}\n")
    with pytest.raises(StageError, match=f"ids.txt:2: '{2**63}' is not an app id"):
        read_id_file(path)


def test_zero_apps_stops_and_keeps_the_previous_list(steam, params_file):
    overrides = set_args(steam_overrides(steam))
    assert run_cli("appids", *overrides, "-S", "appids.limit=3").exit_code == 0
    steam.routes.clear()  # Steam answers with an empty list
    result = run_cli("appids", *overrides)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "steamgan appids: error: the steam source gave 0 apps (an empty or failed answer?); "
        "the previous app list is kept"
    )
    assert len(pd.read_parquet("data/appids/appids.parquet")) == 3
