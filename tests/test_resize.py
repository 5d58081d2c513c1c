import errno
import os
from pathlib import Path

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


def watch_writes_into(folder: str, monkeypatch) -> dict:
    """Record files written under ``folder``; the disk is "full" once ``space`` is used up."""
    state = {"written": [], "space": 1000}
    real = Path.write_bytes

    def write_bytes(self, data):
        if folder in self.as_posix():
            if len(state["written"]) >= state["space"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            state["written"].append(self.name.split(".")[1])  # .<appid>.png.<random>.part
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return state


def test_a_failed_resize_leaves_the_previous_outputs_whole_and_resumes(
    capsules, params_file, monkeypatch
):
    write_upstream(params_file.parent)
    assert run_cli("resize", "-S", "resize.size=32").exit_code == 0
    before = {
        name: Path(f"data/resize/{name}").read_bytes()
        for name in ("accepted.parquet", "rejected.parquet")
    }
    images = {p.name: p.read_bytes() for p in Path("data/resize/images").iterdir()}

    disk = watch_writes_into("data/resize/.images.staging", monkeypatch)
    disk["space"] = 2
    result = run_cli("resize", "-S", "resize.size=48", "-S", "resize.workers=1")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("steamgan resize: error: data/resize/.images.staging/3.png: ")
    assert "the disk is full" in line
    # the previous outputs are untouched: same tables, same images, all 32 px
    for name, data in before.items():
        assert Path(f"data/resize/{name}").read_bytes() == data
    assert {p.name: p.read_bytes() for p in Path("data/resize/images").iterdir()} == images

    # space again: the re-run resumes (the two 48 px images written before are kept)
    disk.update(written=[], space=1000)
    result = run_cli("resize", "-S", "resize.size=48", "-S", "resize.workers=1")
    assert result.exit_code == 0, result.output
    assert sorted(disk["written"]) == ["3", "4", "5"]
    table = pd.read_parquet("data/resize/accepted.parquet")
    assert table["appid"].tolist() == [1, 2, 3, 4, 5]
    assert all(Image.open(p).size == (48, 48) for p in table["path"])
    assert not Path("data/resize/.images.staging").exists()


def test_resize_of_zero_rows_writes_empty_tables_and_names_the_upstream(params_file):
    upstream = pio.upstream_table("resize")
    upstream.parent.mkdir(parents=True)
    pd.DataFrame(
        {"appid": pd.Series([], dtype="int64"), "path": pd.Series([], dtype=str)}
    ).to_parquet(upstream)
    result = run_cli("resize")
    assert result.exit_code == 0, result.output
    assert "resize: 0 images: the 'faces' stage kept none (data/faces/accepted.parquet)" in (
        result.output
    )
    accepted = pd.read_parquet("data/resize/accepted.parquet")
    assert accepted.empty and {"appid", "path", "pixels", "sum_r"} <= set(accepted.columns)
    assert pd.read_parquet("data/resize/rejected.parquet").empty
    # the dataset stage stops there, in one line, before anything trains on nothing
    result = run_cli("dataset")
    assert result.exit_code == 1
    assert "0 image(s), fewer than dataset.min_images (100)" in result.output
    assert "Traceback" not in result.output
