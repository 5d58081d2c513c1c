import pandas as pd
import pytest

from pipeline import io as pio
from pipeline.appids import collect_appids, fetch_steamspy_lists, read_id_file, select_appids
from pipeline.errors import StageError
from pipeline.http import make_session
from pipeline.params import AppidsParams, validate_params
from pipeline.steam import parse_appid
from tests.conftest import run_cli, set_args, steam_overrides


def test_steam_source_sorted_unique_and_named(steam):
    params = AppidsParams(source="steam", steam_api_url=steam.app_list_url)
    table = collect_appids(params, make_session(retries=1))
    assert list(table.columns) == ["appid", "name", "source", "labels"]
    assert table["appid"].tolist() == steam.app_ids()  # duplicates in the answer removed
    assert (table["labels"] == "").all()  # no tags asked for: present and empty
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
        "labels": ["", ""],
    }


def steamspy_lists(steam, **changes) -> AppidsParams:
    settings = dict(source="steamspy", steamspy_url=steam.steamspy_url)
    return AppidsParams(**{**settings, "steamspy_request_delay_s": 0, **changes})


def test_tags_and_genres_are_the_union_of_their_lists_with_labels(steam, tmp_path):
    """Two tags and a genre: every app SteamSpy lists for any of them, each labelled with
    those it is in, in params order (tags, then genres), whatever order SteamSpy lists."""
    params = steamspy_lists(steam, tags=("Horror", "Anime"), genres=("Racing",))
    pages = []
    table = collect_appids(params, make_session(retries=1), on_page=lambda p, n: pages.append(n))
    expected = {}
    for appid, tags in steam.tags.items():
        names = [n for n in ("Horror", "Anime", "Racing") if n in tags]
        if names:
            expected[appid] = "|".join(names)
    assert table["appid"].tolist() == sorted(expected)
    assert dict(zip(table["appid"], table["labels"], strict=True)) == expected
    assert {"Horror|Anime", "Horror", "Anime", "Racing"} <= set(expected.values())
    assert (table["source"] == "steamspy").all() and table["name"].ne("").all()
    assert steam.requests["/steamspy/api.php"] == 3  # one request per name, no request=all
    assert len(pages) == 3 and pages[-1] == len(expected)
    pio.write_table(tmp_path / "appids.parquet", table)
    written = pio.read_table(tmp_path / "appids.parquet", columns=("appid", "labels"))
    assert written.equals(table)  # round-trips as is


def test_tags_with_a_limit_keep_the_first_ids_of_the_union(steam):
    params = steamspy_lists(steam, tags=("Anime", "Horror"), limit=4)
    table = collect_appids(params, make_session(retries=1))
    union = sorted(a for a, tags in steam.tags.items() if {"Anime", "Horror"} & set(tags))
    assert table["appid"].tolist() == union[:4]


def test_a_tag_no_app_has_stops_naming_it(steam):
    params = steamspy_lists(steam, tags=("Anime", "Animee"))
    with pytest.raises(StageError, match=r"appids.tags: SteamSpy lists no app .* tag 'Animee'"):
        collect_appids(params, make_session(retries=1))


def test_tag_requests_wait_between_them(steam):
    waits = []
    params = steamspy_lists(steam, tags=("Anime",), genres=("Racing", "Indie"))
    fetch_steamspy_lists(
        make_session(retries=1), params.steamspy_url, params.tags, params.genres, 1.5,
        sleep=waits.append,
    )  # fmt: skip
    assert waits == [1.5, 1.5]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": "steam", "tags": ["Anime"]}, "appids.tags: .* set appids.source=steamspy"),
        ({"tags": ["Anime", "Anime"]}, "appids.tags: .*Anime: each tag or genre may appear once"),
        ({"tags": ["Indie"], "genres": ["Indie"]}, "appids.genres: .*Indie: each tag or genre"),
        ({"tags": ["A|B"]}, r"appids.tags: .*no '\|' in a name"),
        ({"genres": [""]}, "appids.genres"),
    ],
)
def test_bad_tags_and_genres_are_refused_in_one_line(changes, message):
    raw = {"appids": {"source": "steamspy", **changes}}
    with pytest.raises(StageError, match=message):
        validate_params(raw)


def test_id_file_label_column_becomes_labels(tmp_path):
    """A CSV's label column (one label, or several joined by "|"); an app on several rows
    gets the labels of them all."""
    path = tmp_path / "apps.csv"
    path.write_text(
        "appid,name,label\n570,Dota 2,Strategy\n10,,Action | Classic\n30,,\n570,,Free\n"
    )
    table = select_appids(read_id_file(path))
    assert table.to_dict("list") == {
        "appid": [10, 30, 570],
        "name": ["", "", "Dota 2"],
        "source": ["file"] * 3,
        "labels": ["Action|Classic", "", "Strategy|Free"],
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
        "appids.file=<a CSV of appids>, or use params.offline.yaml (docs/offline.md)"
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


def test_stage_writes_the_labels_of_two_tags(steam, params_file):
    overrides = [*steam_overrides(steam), "appids.source=steamspy", "appids.tags=[Anime, Horror]"]
    result = run_cli("appids", *set_args(overrides), "-S", "appids.steamspy_request_delay_s=0")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet("data/appids/appids.parquet")
    assert set(table["labels"]) == {"Anime", "Horror", "Anime|Horror"}
    for appid, labels in zip(table["appid"], table["labels"], strict=True):
        assert labels.split("|") == [t for t in ("Anime", "Horror") if t in steam.tags[appid]]
