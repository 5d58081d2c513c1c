"""The report stage: funnel counts against the stage tables, the contact sheets' images, the
one-line sections of stages that have not run, experiments, and a 10,000-row run; in a real
browser (headless Chromium) when there is one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import io as pio
from pipeline.params import load_params
from pipeline.report import build_report
from pipeline.report.experiments import experiments_table, parse_exp_show
from pipeline.report.page import not_run
from pipeline.validate import Frame
from tests.conftest import (
    needs_shared,
    run_cli,
    set_args,
    steam_overrides,
    write_shipped_params,
)
from tests.e2e_helpers import faces_overrides
from tests.fake_steam import FakeSteam

CURATION = ("appids", "download", "validate", "faces", "resize", "dataset")


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, attr: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if attr in a]


def report_params(root: Path, *overrides: str):
    return load_params(root / "params.yaml", ["report.experiments=false", *overrides])


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """The tiny offline curation (fake Steam on 127.0.0.1 serving the shared capsules, the
    shared RetinaFace), each stage run as ``steamgan <stage>`` in a scratch folder."""
    needs_shared("data", "steam_capsules")
    root = tmp_path_factory.mktemp("curated")
    write_shipped_params(root / "params.yaml")
    with FakeSteam() as steam, contextlib.chdir(root):
        overrides = [*steam_overrides(steam), *faces_overrides(root), "resize.size=32"]
        for stage in CURATION:
            result = run_cli(stage, *set_args(overrides))
            assert result.exit_code == 0, f"{stage}: {result.output}"
    return root


@pytest.fixture(scope="module")
def curated_page(curated) -> tuple[Path, Elements]:
    # beside data/report, which test_report_stage_cli rewrites with other params
    page = build_report(report_params(curated), root=curated, out_dir=curated / "built")
    return page, Elements(page.read_text())


def test_funnel_counts_equal_the_stage_tables(curated, curated_page):
    page, dom = curated_page
    shown = {a["data-stage"]: a for a in dom.having("data-stage")}
    counts = {a["data-stage"]: int(a["data-count"]) for a in dom.having("data-count")}
    read = pd.read_parquet
    manifest = read(curated / "data/download/manifest.parquet")
    expected = {
        "appids": len(read(curated / "data/appids/appids.parquet")),
        "download": int((manifest["status"] == "ok").sum()),
        "validate": len(read(curated / "data/validate/accepted.parquet")),
        "faces": len(read(curated / "data/faces/accepted.parquet")),
        "resize": len(read(curated / "data/resize/accepted.parquet")),
        "dataset": pio.read_json(curated / "data/dataset/stats.json")["count"],
    }
    assert set(shown) == set(CURATION)
    assert counts == expected
    # and the summaries agree with them
    assert counts["download"] == pio.read_json(curated / "data/download/summary.json")["ok"]
    assert counts["validate"] == pio.read_json(curated / "data/validate/summary.json")["accepted"]
    assert counts["faces"] == pio.read_json(curated / "data/faces/summary.json")["accepted"]
    # each rejection reason's count, as the validate table has them
    rejected = read(curated / "data/validate/rejected.parquet")["reason"].value_counts()
    breakdown = {a["data-what"]: int(a["data-n"]) for a in dom.having("data-what")}
    for reason, n in rejected.items():
        assert breakdown[f"rejected: {reason}"] == n
    assert breakdown["missing"] == 1 and breakdown["invalid"] == 1 and breakdown["error"] == 1
    assert (page.parent / "funnel.svg").read_text().lstrip().startswith("<?xml")


def _sheets(dom: Elements) -> dict[str, list[dict[str, str]]]:
    """Each sheet's tiles (and download rows), by sheet id, in page order."""
    sheets: dict[str, list[dict[str, str]]] = {}
    current = None
    for _, attrs in dom.tags:
        if "data-sheet" in attrs:
            current = sheets.setdefault(attrs["data-sheet"], [])
        elif "data-appid" in attrs and current is not None:
            current.append(attrs)
    return sheets


def test_contact_sheets_hold_the_right_images(curated, curated_page):
    page, dom = curated_page
    sheets = _sheets(dom)
    examples = load_params(curated / "params.yaml").report.examples
    rejected = pd.read_parquet(curated / "data/validate/rejected.parquet")
    for reason, rows in rejected.groupby("reason"):
        tiles = sheets[f"validate-{reason}"]
        shown = [int(t["data-appid"]) for t in tiles]
        if reason == "near_duplicate":
            kept = rows["detail"].str.extract(r"of (\d+)")[0].astype(int)
            assert {int(t["data-appid"]): int(t["data-pair"]) for t in tiles} == dict(
                zip(rows["appid"], kept, strict=True)
            )
        else:
            assert shown == sorted(rows["appid"])[:examples]
    assert len(sheets["validate-vignette"]) == examples  # 24 capsules + the fake's framed one
    faces = pd.read_parquet(curated / "data/faces/rejected.parquet")
    shown = [int(t["data-appid"]) for t in sheets["faces-face_count"]]
    assert shown == sorted(faces["appid"])[:examples]
    manifest = pd.read_parquet(curated / "data/download/manifest.parquet")
    for status in ("missing", "invalid", "error"):
        expected = sorted(manifest.loc[manifest["status"] == status, "appid"])
        assert [int(t["data-appid"]) for t in sheets[f"download-{status}"]] == expected
    accepted = set(pd.read_parquet(curated / "data/resize/accepted.parquet")["appid"])
    shown = [int(t["data-appid"]) for t in sheets["accepted"]]
    assert len(shown) == examples and len(set(shown)) == examples and set(shown) <= accepted
    # every picture the page names is in the report folder, and is an image
    sources = [a["src"] for tag, a in dom.tags if tag == "img"]
    assert len(sources) > 60  # the funnel chart and every tile's thumbnails (about 75 here)
    for src in sources:
        if src.endswith(".svg"):
            assert "<svg" in (page.parent / src).read_text()
            continue
        with Image.open(page.parent / src) as im:
            im.verify()


def test_thumbnails_show_what_decided(curated, curated_page):
    """The face boxes are drawn on face rejections, the frame is tinted on vignettes."""
    page, dom = curated_page
    sheets = _sheets(dom)
    detections = pd.read_parquet(curated / "data/faces/detections.parquet").set_index("appid")
    appid = int(sheets["faces-face_count"][0]["data-appid"])
    assert detections.loc[appid, "n_faces"] >= 1
    thumb = np.asarray(Image.open(page.parent / f"thumbs/faces-face_count-{appid}-original.jpg"))
    red = (thumb[..., 0] > 200) & (thumb[..., 1] < 90) & (thumb[..., 2] < 90)
    assert red.sum() > 50  # the box outline and its score label
    rejected = pd.read_parquet(curated / "data/validate/rejected.parquet").set_index("appid")
    appid = int(sheets["validate-vignette"][0]["data-appid"])
    frame = Frame.from_detail(rejected.loc[appid, "detail"])
    src = np.asarray(Image.open(curated / rejected.loc[appid, "path"]).convert("RGB"), float)
    left, top = frame.left, frame.top
    right, bottom = src.shape[1] - frame.right, src.shape[0] - frame.bottom  # the content box
    thumb = np.asarray(Image.open(page.parent / f"thumbs/validate-vignette-{appid}.jpg"), float)
    scale = thumb.shape[0] / src.shape[0]
    frame_side = max(
        ("left", left),
        ("top", top),
        ("right", src.shape[1] - right),
        ("bottom", src.shape[0] - bottom),
        key=lambda s: s[1],
    )
    assert frame_side[1] > 2
    caption = page.read_text().split(f'data-appid="{appid}"')[1][:2000]
    assert "frame on " in caption and f"{frame_side[0]} {frame_side[1]} px" in caption
    assert f"picture meets {frame.edge:.0%} of an edge" in caption
    # inside the content box the thumbnail is the picture, in the frame it is tinted red
    inner = thumb[int((top + bottom) / 2 * scale), int((left + right) / 2 * scale)]
    assert np.abs(inner - src[(top + bottom) // 2, (left + right) // 2]).max() < 60


def test_traceability_rows_and_csv(curated, curated_page):
    page, _ = curated_page
    trace = pd.read_csv(page.parent / "trace.csv", keep_default_na=False)
    appids = pd.read_parquet(curated / "data/appids/appids.parquet")
    assert trace["appid"].tolist() == sorted(appids["appid"])
    row = trace.set_index("appid")
    assert row.loc[9_000_001, "download"] == "missing (404)"
    assert row.loc[9_000_009, "validate"].startswith("vignette: bands left ")
    assert row.loc[9_000_010, "validate"].startswith("near_duplicate: of ")
    assert row.loc[9_000_010, "faces"] == ""  # never reached faces
    kept = pd.read_parquet(curated / "data/resize/accepted.parquet")["appid"]
    assert set(row.index[row["dataset"] == "in"]) == set(kept)
    manifest = pd.read_parquet(curated / "data/download/manifest.parquet").set_index("appid")
    assert row.loc[kept.iloc[0], "sha256"] == manifest.loc[kept.iloc[0], "sha256"]
    html = page.read_text()
    data = html.split('<script id="trace-data" type="application/json">')[1].split("</script>")[0]
    embedded = json.loads(data)
    assert [r[0] for r in embedded] == trace["appid"].tolist()
    assert embedded[0][1:] == [str(v) for v in trace.iloc[0, 1:]]


def test_stages_not_run_give_one_line(tmp_path):
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path), root=tmp_path)
    html = page.read_text()
    for stage, what in (
        ("appids", "data/appids/appids.parquet"),
        ("train", "dvclive/metrics.json"),
        ("evaluate", "data/evaluate/metrics.json"),
        ("render", "data/render/render.json"),
    ):
        assert not_run(stage, what) in html
    assert "report.experiments: false" in html
    assert Elements(html).having("data-count") == []


def test_only_curation_ran(curated, tmp_path):
    """A run whose training has not started: the curation sections, then one line each."""
    root = tmp_path / "run"
    shutil.copytree(curated, root, ignore=shutil.ignore_patterns("report", "built"))
    page = build_report(report_params(root), root=root)
    html = page.read_text()
    assert not_run("train", "dvclive/metrics.json") in html
    assert not_run("evaluate", "data/evaluate/metrics.json") in html
    assert len(Elements(html).having("data-count")) == len(CURATION)


def test_report_stage_cli(curated):
    with contextlib.chdir(curated):
        result = run_cli("report", "-S", "report.experiments=false", "-S", "report.examples=3")
    assert result.exit_code == 0, result.output
    sheets = _sheets(Elements((curated / "data/report/index.html").read_text()))
    assert len(sheets["validate-vignette"]) == 3


def test_bad_params_stop_with_one_line(curated):
    with contextlib.chdir(curated):
        result = run_cli("report", "-S", "report.examples=-1")
    assert result.exit_code == 1
    assert "report.examples" in result.output


def test_experiments_sorted_by_fid_with_params_diff(tmp_path):
    def entry(name, seed, fid, steps=4):
        return {
            "rev": f"{name}000000",
            "name": name,
            "data": {
                "params": {"params.yaml": {"data": {"train": {"seed": seed, "steps": steps}}}},
                "metrics": {"data/evaluate/metrics.json": {"data": {"fid": fid, "kid": 0.1}}},
            },
        }

    listing = [
        {"rev": "workspace", "name": None, "data": entry("w", 0, 50.0)["data"]},
        {
            **entry("main", 0, 50.0),
            "experiments": [
                {"revs": [entry("exp-a", 1, 20.0)]},
                {"revs": [entry("exp-b", 2, None)]},
                {"revs": [entry("exp-c", 3, 10.0)]},
            ],
        },
    ]
    experiments = parse_exp_show(listing)
    assert [r["name"] for r in experiments.rows] == ["exp-c", "exp-a", "main", "exp-b"]
    assert experiments.params == ["train.seed"]  # steps is the same everywhere
    # the headline metrics, not every number of every metrics file
    assert experiments.metrics == [
        "data/evaluate/metrics.json:fid",
        "data/evaluate/metrics.json:kid",
    ]
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path), root=tmp_path, experiments=experiments)
    runs = [a["data-run"] for a in Elements(page.read_text()).having("data-run")]
    assert runs == ["exp-c", "exp-a", "main", "exp-b"]


def test_experiments_table_fits_the_width_with_the_params_that_differ():
    """`steamgan experiments`: every run in a table no wider than asked, long param values
    cut with …, a commit that never ran left out (`dvc exp show` printed 58 columns, 1,435
    characters wide, on a fresh clone)."""

    def entry(name, params, metrics):
        data = {"params": {"params.yaml": {"data": params}}, "metrics": metrics}
        return {"rev": f"{name}000000", "name": name, "data": data}

    def run(name, size, channels, fid):
        params = {
            "resize": {"size": size, "mode": "pad"},
            "train": {"steps": 4, "lightweight": {"channels": channels}},
            "faces": {"detectors": ["retinaface", "face_alignment"] * 8},
        }
        metrics = {
            "data/evaluate/metrics.json": {"data": {"fid": fid, "kid": 0.0123, "recall": 0.5}},
            "data/dataset/stats.json": {"data": {"count": 1234}},
            "dvclive/metrics.json": {"data": {"step": 4}},
        }
        return entry(name, params, metrics)

    never_ran = entry("main", {"resize": {"size": 256, "mode": "pad"}}, {})
    never_ran["experiments"] = [
        {"revs": [run("quick-32-with-a-long-experiment-name", 32, 8, 181.25)]},
        {"revs": [run("quick-64", 64, 16 + 1, 95.5)]},
    ]
    never_ran["experiments"][1]["revs"][0]["data"]["params"]["params.yaml"]["data"]["faces"] = {
        "detectors": ["retinaface"]
    }
    table = experiments_table(parse_exp_show([never_ran]), width=120)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120, table
    header, first, second, note = lines
    assert header.split()[:6] == ["experiment", "fid", "kid", "recall", "images", "steps"]
    assert first.startswith("quick-64 ") and " 95.5 " in first and " 1,234 " in first
    assert "lightweight.channels=17" in first and "resize.size=64" in first
    assert second.startswith("quick-32-with-a-long-ex…") and second.endswith("…")
    assert note == "(1 commit(s) without metrics left out)"
    assert "train.steps" not in table  # the same in every run


def synthetic_run(root: Path, rows: int) -> None:
    """A run of ``rows`` app ids with every curation table (a few real images), no training."""
    rng = np.random.default_rng(0)
    appids = np.arange(10, 10 * rows + 10, 10)
    images = root / "data/download/images"
    images.mkdir(parents=True)
    for appid in appids[:400]:
        Image.fromarray(rng.integers(0, 255, (69, 184, 3), dtype=np.uint8)).save(
            images / f"{appid}.jpg"
        )
    status = np.where(rng.random(rows) < 0.05, "missing", "ok")
    manifest = pd.DataFrame(
        {
            "appid": appids,
            "kind": "capsule_184x69",
            "url": [f"http://127.0.0.1/cdn/{a}/capsule_184x69.jpg" for a in appids],
            "status": status,
            "http_status": np.where(status == "ok", 200, 404),
            "bytes": 5000,
            "sha256": [f"{a:064x}" for a in appids],
            "error": None,
            "path": [f"data/download/images/{a}.jpg" for a in appids],
        }
    )
    pio.write_table(
        root / "data/appids/appids.parquet",
        pd.DataFrame({"appid": appids, "name": [f"Game {a}" for a in appids], "source": "steam"}),
    )
    pio.write_table(root / "data/download/manifest.parquet", manifest)
    ok = manifest[manifest["status"] == "ok"]
    bad = rng.random(len(ok)) < 0.3
    reasons = rng.choice(["wrong_size", "blank", "vignette"], len(ok))
    pio.write_table(root / "data/validate/accepted.parquet", ok.loc[~bad, ["appid", "path"]])
    pio.write_table(
        root / "data/validate/rejected.parquet",
        ok.loc[bad, ["appid", "path"]].assign(
            reason=reasons[bad], detail="bands left 2, top 3, right 4, bottom 3 px"
        ),
    )


def test_large_run_builds(tmp_path):
    """10,000 app ids: the page carries them all, the table is paged (the browser test and
    bench/report.py measure the time)."""
    synthetic_run(tmp_path, 10_000)
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path), root=tmp_path)
    html = page.read_text()
    data = html.split('<script id="trace-data" type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)) == 10_000
    assert html.count("<tr") < 200  # the rows are drawn a page at a time, by the script
    assert page.stat().st_size < 5_000_000


# Headless Chromium on a closed network: no background services, a fresh profile per test.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Force lazy images to load and wait for each: [src, naturalWidth] per <img>.
LOAD_IMAGES = """() => Promise.all([...document.images].map(img => {
  img.loading = "eager";
  return img.decode().then(() => [img.src, img.naturalWidth], () => [img.src, 0]);
}))"""


@pytest.fixture
def browser(tmp_path):
    """Playwright driving the system Chromium (no browser download), or skip with the reason."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = next(
        (p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None
    )
    if executable is None:
        pytest.skip("Chromium is absent (apt-get install -y chromium); see docs/render.md, report")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1300, "height": 900},
        )
        yield context
        context.close()


def open_page(context, page_path: Path):
    """The page loaded, with the console errors and failed requests it produced."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    start = time.perf_counter()
    page.goto(page_path.as_uri(), wait_until="load")
    page.wait_for_selector("#trace-table tbody tr")
    return page, problems, time.perf_counter() - start


def test_page_in_chromium(curated, curated_page, browser, tmp_path):
    page_path, _ = curated_page
    page, problems, _ = open_page(browser, page_path)
    counts = page.eval_on_selector_all(
        "tr[data-count]", "rows => rows.map(r => [r.dataset.stage, Number(r.dataset.count)])"
    )
    summaries = {
        "download": pio.read_json(curated / "data/download/summary.json")["ok"],
        "validate": pio.read_json(curated / "data/validate/summary.json")["accepted"],
        "faces": pio.read_json(curated / "data/faces/summary.json")["accepted"],
        "dataset": pio.read_json(curated / "data/dataset/stats.json")["count"],
    }
    assert {k: v for k, v in counts if k in summaries} == summaries
    images = page.evaluate(LOAD_IMAGES)
    assert len(images) > 60  # about 75 on the shared capsules
    assert [src for src, width in images if width == 0] == []
    # the traceability table: one page of rows, and the search finds one app
    page_size = load_params(curated / "params.yaml").report.page_size
    assert page.locator("#trace-table tbody tr").count() == page_size
    page.fill("#trace-search", "9000010")
    assert page.locator("#trace-table tbody tr").count() == 1
    assert "near_duplicate" in page.inner_text("#trace-table tbody")
    page.fill("#trace-search", "")
    shot = tmp_path / "report.png"
    page.screenshot(path=shot, full_page=True)
    assert Image.open(shot).height > 2000
    assert problems == []
    if target := os.environ.get("STEAMGAN_REPORT_SCREENSHOT"):  # to look at it
        shutil.copy(shot, target)


def test_large_page_in_chromium(tmp_path, browser, record_property):
    """10,000 rows: the page loads fast and pages through them; the load time is printed."""
    root = tmp_path / "run"
    synthetic_run(root, 10_000)
    write_shipped_params(root / "params.yaml")
    page_path = build_report(report_params(root), root=root)
    page, problems, seconds = open_page(browser, page_path)
    page_size = load_params(root / "params.yaml").report.page_size
    assert page.locator("#trace-table tbody tr").count() == page_size
    assert "of 10,000 rows" in page.inner_text("#trace-count")
    start = time.perf_counter()
    page.fill("#trace-search", "game 99990")
    searched = time.perf_counter() - start
    assert page.locator("#trace-table tbody tr").count() == 1
    page.fill("#trace-search", "")
    page.click("#trace-next")
    first = page.inner_text("#trace-table tbody tr >> nth=0")
    assert first.startswith(f"{10 * (page_size + 1)}\t")  # app ids are 10, 20, 30…
    assert problems == []
    record_property("load_s", seconds)
    print(f"10,000-row report: loaded in {seconds:.2f} s, search in {searched:.3f} s")


def test_original_label_matches_the_faces_stage():
    from pipeline.faces.curate import ORIGINAL
    from pipeline.report.sheets import ORIGINAL as SHOWN

    assert SHOWN == ORIGINAL


def test_names_cannot_break_the_page(tmp_path):
    """App names are Steam's text: markup in them is shown as text, in tiles and in the table."""
    synthetic_run(tmp_path, 50)
    appids = pd.read_parquet(tmp_path / "data/appids/appids.parquet")
    hostile = "</script><!--<script>alert(1)</script> & <b>bold</b>"
    appids.loc[0, "name"] = hostile
    pio.write_table(tmp_path / "data/appids/appids.parquet", appids)
    write_shipped_params(tmp_path / "params.yaml")
    html = build_report(report_params(tmp_path), root=tmp_path).read_text()
    assert "<script>alert" not in html and "<b>bold" not in html
    data = html.split('<script id="trace-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)[0][1] == hostile


def test_face_rejections_show_each_resolution(tmp_path):
    """One picture per resolution the faces stage judged (the square one made as faces made
    it), each with the boxes of every detector at that resolution."""
    synthetic_run(tmp_path, 30)
    valid = pd.read_parquet(tmp_path / "data/validate/accepted.parquet").head(3)
    boxes = {
        "face_alignment": [[2.0, 2.0, 60.0, 60.0]],
        "retinaface": [[100.0, 80.0, 200.0, 200.0]],
    }
    rows = [
        (appid, detector, resolution, 1, boxes[detector], [0.9])
        for appid in valid["appid"]
        for detector in boxes
        for resolution in ("original", "256")
    ]
    detections = pd.DataFrame(
        rows, columns=["appid", "detector", "resolution", "n_faces", "boxes", "scores"]
    )
    pio.write_table(tmp_path / "data/faces/detections.parquet", detections)
    rejected = valid.assign(reason="face_count", detail="face_alignment: original 1, 256 1")
    pio.write_table(tmp_path / "data/faces/rejected.parquet", rejected)
    pio.write_table(tmp_path / "data/faces/accepted.parquet", valid.iloc[:0])
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path, "report.thumb_height=64"), root=tmp_path)
    dom = Elements(page.read_text())
    tiles = _sheets(dom)["faces-face_count"]
    assert [int(t["data-appid"]) for t in tiles] == valid["appid"].tolist()
    appid = int(valid["appid"].iloc[0])
    original = Image.open(page.parent / f"thumbs/faces-face_count-{appid}-original.jpg")
    square = Image.open(page.parent / f"thumbs/faces-face_count-{appid}-256.jpg")
    assert original.size == (171, 64) and square.size == (64, 64)  # 184×69 and 256×256
    # both detectors' colours are drawn (red face_alignment, green retinaface)
    pixels = np.asarray(square.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((pixels[:, 0] > 180) & (pixels[:, 1] < 100)).any()
    assert ((pixels[:, 1] > 150) & (pixels[:, 0] < 120) & (pixels[:, 2] < 140)).any()


def test_training_and_evaluation_sections(tmp_path):
    """DVCLive's files as the train stage writes them: the numbers, one chart per group of
    curves, the latest sample grid; the device read from the log; nulls with their notes."""
    live = tmp_path / "dvclive"
    (live / "plots/metrics/loss").mkdir(parents=True)
    (live / "plots/images/samples").mkdir(parents=True)
    for name in ("G", "D_real"):
        (live / f"plots/metrics/loss/{name}.tsv").write_text(f"step\t{name}\n1\t0.5\n2\t0.25\n")
    (live / "plots/metrics/kimg.tsv").write_text("step\tkimg\n1\t0.008\n2\t0.016\n")
    (live / "plots/metrics/loss/finite.tsv").write_text("step\tfinite\n1\t1.0\n2\t0.0\n")
    for step in (2, 4):
        Image.new("RGB", (64, 32), (step * 40, 0, 0)).save(
            live / f"plots/images/samples/{step:07d}.png"
        )
    metrics = {"loss": {"G": 0.25}, "kimg": 0.016, "speed": {"images_per_s": 123.4}, "step": 2}
    pio.write_json(live / "metrics.json", {**metrics, "memory": {"gpu_peak_gib": 3.5}})
    per_class = {"daisy": 30.5, "tulip": None}  # evaluate's one nested metric
    pio.write_json(
        tmp_path / "data/evaluate/metrics.json",
        {"fid": 12.5, "ppl_w": None, "fid_per_class": per_class},
    )
    notes = {"ppl_w": "lightweight has no W space", "fid_per_class.tulip": "1 generated image"}
    warnings = {"fid": "41 images per set (1,000 generated, 41 real), below the 2,049 …"}
    pio.write_json(
        tmp_path / "data/evaluate/notes.json",
        {"notes": notes, "warnings": warnings, "settings": {}},
    )
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path), root=tmp_path)
    html = page.read_text()
    rows = {a["data-key"] for a in Elements(html).having("data-key")}
    assert {"step", "kimg", "images/s", "precision", "device", "memory/gpu_peak_gib"} <= rows
    assert '<td class="n">123.4</td>' in html and '<td class="n">cuda</td>' in html
    sources = [a["src"] for tag, a in Elements(html).tags if tag == "img"]
    assert sources == ["training/loss.svg", "training/0000004.png"]  # kimg is a number above
    assert "loss/D_real" in (page.parent / "training/loss.svg").read_text()
    # the 0/1 finite flag is a row (how many steps were not), not a curve among the losses
    assert "loss/finite" not in (page.parent / "training/loss.svg").read_text()
    assert 'data-key="non-finite steps"' in html and "of 2 logged steps (at 2)" in html
    # the small-sample warning the evaluate stage printed, beside the number
    assert "warning: 41 images per set (1,000 generated, 41 real)" in html
    assert 'data-key="ppl_w"' in html and "lightweight has no W space" in html
    assert 'data-key="fid_per_class.daisy"' in html and '<td class="n">30.5</td>' in html
    assert 'data-key="fid_per_class.tulip"' in html and "1 generated image" in html
    assert not_run("render", "data/render/render.json") in html


def test_damaged_files_are_named_not_fatal(curated, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(curated, root, ignore=shutil.ignore_patterns("report", "built"))
    (root / "data/faces/rejected.parquet").write_bytes(b"not parquet")
    (root / "data/download/summary.json").write_text("{truncated")
    page = build_report(report_params(root), root=root)
    dom = Elements(page.read_text())
    named = {a["data-damaged"] for a in dom.having("data-damaged")}
    assert named == {"data/faces/rejected.parquet", "data/download/summary.json"}
    assert "dvc repro -f faces" in page.read_text()
    assert "faces-face_count" not in _sheets(dom)  # its table is unreadable: no sheet
    assert len(dom.having("data-count")) == len(CURATION)  # the rest is all there


def test_training_section_reads_what_the_run_was_from_run_json(tmp_path):
    """The train stage's data/train/run.json (resolved settings), not guesses from the log:
    with `train.device: auto` and no GPU memory logged, the page used to infer the device."""
    live = tmp_path / "dvclive"
    live.mkdir()
    pio.write_json(live / "metrics.json", {"step": 2, "kimg": 0.016})
    info = {
        "model": "stylegan2", "device": "cuda:0", "precision": "bf16",
        "parameters": {"G": 1_234_567, "D": 765_432}, "classes": ["Anime", "Horror"],
    }  # fmt: skip
    pio.write_json(tmp_path / "data/train/run.json", info)
    write_shipped_params(tmp_path / "params.yaml")
    page = build_report(report_params(tmp_path), root=tmp_path)
    html = page.read_text()
    cells = {a["data-key"] for a in Elements(html).having("data-key")}
    assert {"precision", "device", "parameters", "classes"} <= cells
    assert '<td class="n">bf16</td>' in html and '<td class="n">cuda:0</td>' in html
    assert "G 1,234,567, D 765,432" in html and "Anime, Horror" in html
    assert "data/train/run.json" in html


def test_nothing_outside_the_project_is_read_or_copied(tmp_path):
    """The report folder is shared: a table path that is absolute or climbs with ``..``, and
    links out of the project (a render picture to a text file, a DVCLive sample, its
    metrics), give placeholders and notes; a link inside the project is followed."""
    root = tmp_path / "project"
    synthetic_run(root, 50)
    write_shipped_params(root / "params.yaml")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (184, 69), (255, 0, 255)).save(outside)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    rejected = pd.read_parquet(root / "data/validate/rejected.parquet")
    first, second = rejected["appid"].iloc[:2]
    rejected.loc[rejected.index[:2], "path"] = [str(outside), "../outside.png"]
    pio.write_table(root / "data/validate/rejected.parquet", rejected)
    images = root / "data/render/images"
    images.mkdir(parents=True)
    (images / "fakes.png").symlink_to(secret)
    (images / "reals.png").symlink_to(root / "data/download/images/10.jpg")  # inside: shown
    samples = root / "dvclive/plots/images/samples"
    samples.mkdir(parents=True)
    (samples / "0000002.png").symlink_to(outside)
    (tmp_path / "metrics.json").write_text('{"step": 123456789}')
    (root / "dvclive/metrics.json").symlink_to(tmp_path / "metrics.json")

    page = build_report(report_params(root), root=root)
    html = page.read_text()
    dom = Elements(html)
    copied = [p for p in page.parent.rglob("*") if p.is_file()]
    assert not any(b"root:x:0:0" in p.read_bytes() for p in copied)
    assert "123456789" not in html
    assert sorted(p.name for p in (page.parent / "render").iterdir()) == ["reals.png"]
    assert not (page.parent / "training").exists()
    for path in (page.parent / "thumbs").iterdir():  # none is the magenta picture outside
        mean = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).mean(0)
        assert not (mean[0] > 200 and mean[1] < 60 and mean[2] > 200), path.name
    notes = [n for n in html.split("<li data-note>")[1:]]
    expected = [
        f"data/validate/rejected.parquet: {outside}: outside the project (not a path inside "
        "it); shown as a placeholder",
        "data/validate/rejected.parquet: ../outside.png: outside the project (not a path "
        "inside it); shown as a placeholder",
        "data/render/images/fakes.png: outside the project (a link out of it); not copied",
    ]
    for line in expected:
        assert any(note.startswith(line) for note in notes), line
    tiles = {int(t["data-appid"]) for t in _sheets(dom)[f"validate-{rejected['reason'].iloc[0]}"]}
    assert {int(first), int(second)} & tiles  # the rows are still shown
    assert {a["data-damaged"] for a in dom.having("data-damaged")} == {"dvclive/metrics.json"}


def test_one_bad_row_gets_a_placeholder_and_a_note(tmp_path):
    """A reason with "/", a vignette frame wider than its image and an appid that is a string
    each spoil one row, not the page (each stopped it with a line naming no file)."""
    synthetic_run(tmp_path, 50)
    write_shipped_params(tmp_path / "params.yaml")
    rejected = pd.read_parquet(tmp_path / "data/validate/rejected.parquet")
    rejected["appid"] = rejected["appid"].astype(str)
    rows = rejected.index
    rejected.loc[rows[0], "reason"] = "odd/reason"
    rejected.loc[rows[1], ["reason", "detail"]] = [
        "vignette", "bands left 500, top 3, right 400, bottom 3 px"
    ]  # fmt: skip
    wide = rejected.loc[rows[1], "appid"]
    rejected.loc[rows[2], "appid"] = "abc"
    pio.write_table(tmp_path / "data/validate/rejected.parquet", rejected)

    page = build_report(report_params(tmp_path), root=tmp_path)
    html = page.read_text()
    dom = Elements(html)
    notes = html.split("<li data-note>")[1:]
    assert len(notes) == 2
    assert notes[0].startswith(
        "data/validate/rejected.parquet: row 2: appid &#39;abc&#39; is not an app id"
    )
    assert notes[1].startswith(
        f"data/validate/rejected.parquet: appid {wide}: its frame (left 500, top 3, right 400, "
        "bottom 3 px) does not fit the 184x69 image; shown as a placeholder"
    )
    sheets = _sheets(dom)
    assert len(sheets["validate-odd/reason"]) == 1
    assert 'src="thumbs/validate-odd_reason-' in html  # a file name, not a folder
    assert "?" in {t["data-appid"] for s in sheets.values() for t in s}
    sources = [a["src"] for tag, a in dom.tags if tag == "img"]
    assert len(sources) > 10 and all((page.parent / src).is_file() for src in sources)
    assert len(dom.having("data-count")) == 3  # the funnel and the rest are all there
    data = html.split('<script id="trace-data" type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)) == 50


def test_renders_come_from_render_json_with_its_reasons(tmp_path):
    """The report shows every picture render.json lists (progress strips, class
    interpolation, translation grids included) and one row per reason it gave for what it
    did not draw; a listed path outside images/ is never followed."""
    root = tmp_path / "project"
    synthetic_run(root, 20)
    write_shipped_params(root / "params.yaml")
    images = root / "data/render/images"
    images.mkdir(parents=True)
    names = ("fakes.png", "class-interpolation.png", "translation.png", "progress.png",
             "interpolation-z.gif", "projection.gif")  # fmt: skip
    for name in names:
        Image.new("RGB", (8, 8), (10, 200, 30)).save(images / name)
    files = {
        "fakes": ["images/fakes.png"],
        "class_interpolation": ["images/class-interpolation.png"],
        "translation": ["images/translation.png", "../../params.yaml"],
        "progress": ["images/progress.png"],
        "interpolation_z": ["images/interpolation-z.gif", "videos/interpolation-z.mp4"],
        "projection": ["images/projection.gif"],
    }
    pio.write_json(
        root / "data/render/render.json",
        {
            "model": "tiny",
            "rendered": {name: {"files": listed} for name, listed in files.items()},
            "unsupported": {
                "truncation": "tiny has no mapping network (W space)",
                "mixing": "tiny has no mapping network (W space)",
                "reals": "not in render.parts",
            },
        },
    )
    page = build_report(report_params(root), root=root)
    html = page.read_text()
    shown = sorted(p.name for p in (page.parent / "render").iterdir())
    # every PNG, and the first GIF only (the videos are MP4s)
    assert shown == ["class-interpolation.png", "fakes.png", "interpolation-z.gif",
                     "progress.png", "translation.png"]  # fmt: skip
    assert "class_interpolation: class-interpolation.png" in html
    assert "truncation, mixing" in html and "tiny has no mapping network (W space)" in html
    assert "not in render.parts" in html and "has no W space" not in html
    assert "params.yaml" not in shown
