"""Labels from SteamSpy through the whole curation chain: appids (two tags) → download →
validate → faces → resize → dataset, on real capsules served by the fake Steam, each stage
run as its CLI in this process."""

import hashlib
import json
import zipfile
from pathlib import Path

import pandas as pd

from tests.conftest import run_cli, set_args, steam_overrides
from tests.e2e_helpers import faces_overrides

# Four capsules: 7860 is Alternate History only, 204880 Real-Time only, 17480 and 222750
# both (apps.csv), so the first listed tag must win for two of them.
TAGS = ["Real-Time", "Alternate History"]
EXPECTED = {7860: "Alternate History", 17480: "Real-Time|Alternate History",
            204880: "Real-Time", 222750: "Real-Time|Alternate History"}  # fmt: skip


def test_labels_reach_dataset_json_and_every_table_keeps_the_trace(steam, params_file, tmp_path):
    for appid, labels in EXPECTED.items():  # the fixture's data is what the test says
        assert "|".join(t for t in TAGS if t in steam.tags[appid]) == labels
    overrides = [
        *steam_overrides(steam),
        "appids.source=steamspy",
        f"appids.tags={json.dumps(TAGS)}",
        "appids.steamspy_request_delay_s=0",
        *faces_overrides(tmp_path),
        "resize.size=32",
        "resize.workers=1",
        "validate.workers=1",
        "dataset.labels=tags",
    ]
    for stage in ("appids", "download", "validate", "faces", "resize", "dataset"):
        result = run_cli(stage, *set_args(overrides))
        assert result.exit_code == 0, f"{stage}: {result.output}"

    appids = pd.read_parquet("data/appids/appids.parquet")
    assert dict(zip(appids["appid"], appids["labels"], strict=True)) == EXPECTED
    tables = {
        stage: pd.read_parquet(f"data/{stage}/{name}.parquet").set_index("appid")
        for stage, name in [
            ("download", "manifest"),
            ("validate", "accepted"),
            ("faces", "accepted"),
            ("resize", "accepted"),
        ]
    }
    for stage, table in tables.items():  # every image keeps appid, URL, sha256 and labels
        assert len(table), f"{stage} kept no image"
        for appid, row in table.iterrows():
            assert row["labels"] == EXPECTED[appid], stage
            assert row["url"] == f"{steam.cdn_url}/{appid}/capsule_184x69.jpg", stage
            assert row["sha256"] == hashlib.sha256(steam.routes[appid].body).hexdigest(), stage

    with zipfile.ZipFile("data/dataset/dataset.zip") as archive:
        meta = json.loads(archive.read("dataset.json"))
    kept = sorted(tables["resize"].index)
    first = {appid: TAGS.index(labels.split("|")[0]) for appid, labels in EXPECTED.items()}
    assert meta["classes"] == TAGS
    assert meta["labels"] == [[f"{appid}.png", first[appid]] for appid in kept]
    assert {label for _, label in meta["labels"]} == {0, 1}  # both classes made it through
    stats = json.loads(Path("data/dataset/stats.json").read_text())
    assert sum(stats["classes"].values()) == len(kept) == stats["count"]
