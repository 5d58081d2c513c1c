import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import io as pio
from pipeline.images import channel_sums
from pipeline.resize import border_colour, resize_image
from tests.conftest import run_cli
from tests.images import capsule, save


def banded(width=300, height=450, band=60):
    """Red bands at top and bottom around a green middle: tells the modes apart."""
    im = Image.new("RGB", (width, height), (0, 200, 0))
    im.paste((255, 0, 0), (0, 0, width, band))
    im.paste((255, 0, 0), (0, height - band, width, height))
    return im


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_every_mode_gives_a_square_rgb(mode):
    out = resize_image(banded(), 64, mode)
    assert out.size == (64, 64) and out.mode == "RGB"


def test_stretch_keeps_everything_squashed():
    out = np.asarray(resize_image(banded(), 90, "stretch"))
    assert tuple(out[2, 45]) == (255, 0, 0) and tuple(out[45, 45]) == (0, 200, 0)
    assert tuple(out[-3, 45]) == (255, 0, 0)


def test_crop_keeps_the_centre_square():
    out = np.asarray(resize_image(banded(), 90, "crop"))
    # the centre 300×300 of 300×450 starts 75 px down: past the 60 px red band
    assert (out[..., 0] < 30).all() and (out[..., 1] > 170).all()


def test_pad_fills_with_the_border_colour():
    im = Image.new("RGB", (300, 150), (10, 20, 250))
    im.paste((250, 250, 0), (50, 30, 250, 120))
    assert border_colour(im) == (10, 20, 250)
    out = np.asarray(resize_image(im, 100, "pad"))
    assert tuple(out[5, 50]) == (10, 20, 250) and tuple(out[50, 50]) == (250, 250, 0)


def test_channel_sums_are_exact(capsules):
    im = capsule(5)
    sums, squares = channel_sums(im)
    arr = np.asarray(im).reshape(-1, 3).astype(np.int64)
    assert sums == arr.sum(0).tolist() and squares == (arr**2).sum(0).tolist()


def write_upstream(root, count=5):
    rows = []
    for appid in range(1, count + 1):
        path = save(capsule(appid), root / f"data/download/images/{appid}.jpg")
        rows.append({"appid": appid, "path": str(path.relative_to(root))})
    rows.append({"appid": 99, "path": "data/download/images/99.jpg"})  # vanished since
    upstream = root / pio.upstream_table("resize")  # the faces stage's accepted table
    upstream.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(upstream)


def test_stage_resizes_records_failures_and_resumes(capsules, params_file):
    root = params_file.parent
    write_upstream(root)
    result = run_cli("resize", "-S", "resize.size=32", "-S", "resize.workers=2")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet("data/resize/accepted.parquet")
    assert table["appid"].tolist() == [1, 2, 3, 4, 5]
    for path in table["path"]:
        assert Image.open(path).size == (32, 32)
    rejected = pd.read_parquet("data/resize/rejected.parquet")
    assert rejected["appid"].tolist() == [99] and "file not found" in rejected["error"].iloc[0]
    # pixel sums match the written files
    first = Image.open(table["path"].iloc[0])
    assert [table[f"sum_{c}"].iloc[0] for c in "rgb"] == channel_sums(first)[0]

    # an interrupted run's outputs are reused; a leftover temporary file is cleaned up
    mtimes = {p: os.stat(p).st_mtime_ns for p in table["path"]}
    (root / "data/resize/images/.3.png.x.part").write_bytes(b"half")
    assert run_cli("resize", "-S", "resize.size=32").exit_code == 0
    assert {p: os.stat(p).st_mtime_ns for p in table["path"]} == mtimes
    assert sorted(os.listdir("data/resize/images")) == [".resize.json"] + [
        f"{i}.png" for i in range(1, 6)
    ]
    # other settings redo everything
    assert run_cli("resize", "-S", "resize.size=16").exit_code == 0
    assert Image.open(table["path"].iloc[0]).size == (16, 16)


def test_stage_with_nothing_to_resize_writes_empty_tables(params_file):
    """faces may keep no banner (a set of logos has no faces): resize writes empty tables
    instead of stopping with KeyError: 'error'."""
    root = params_file.parent
    (root / "data/faces").mkdir(parents=True)
    pd.DataFrame(
        {"appid": pd.Series([], dtype="int64"), "path": pd.Series([], dtype=str)}
    ).to_parquet(root / "data/faces/accepted.parquet")
    result = run_cli("resize")
    assert result.exit_code == 0, result.output
    assert "resize: 0 images" in result.output
    assert len(pd.read_parquet("data/resize/accepted.parquet")) == 0
    assert len(pd.read_parquet("data/resize/rejected.parquet")) == 0
