import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import io as pio
from tests.conftest import run_cli
from tests.images import capsule


@pytest.fixture
def resized(capsules, params_file):
    """Run resize on four real capsules so the dataset stage has its real input."""
    root = params_file.parent
    rows = []
    for appid in (40, 10, 30, 20):
        path = root / f"data/download/images/{appid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        capsule(appid).save(path)
        rows.append({"appid": appid, "path": f"data/download/images/{appid}.jpg"})
    upstream = root / pio.upstream_table("resize")  # the faces stage's accepted table
    upstream.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(upstream)
    assert run_cli("resize", "-S", "resize.size=32").exit_code == 0
    return root


def pixels(images):
    return np.concatenate([np.asarray(im).reshape(-1, 3) for im in images]).astype(np.float64)


def test_zip_in_nvlabs_layout_with_stats(resized):
    result = run_cli("dataset", "-S", "dataset.format=zip")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (resized / "data/dataset").iterdir()) == [
        "dataset.zip",
        "stats.json",
    ]
    with zipfile.ZipFile(resized / "data/dataset/dataset.zip") as archive:
        names = archive.namelist()
        assert names == ["10.png", "20.png", "30.png", "40.png", "dataset.json"]
        assert json.loads(archive.read("dataset.json")) == {"labels": None}
        images = [Image.open(archive.open(n)).convert("RGB") for n in names[:-1]]
    assert all(im.size == (32, 32) for im in images)
    stats = json.loads((resized / "data/dataset/stats.json").read_text())
    arr = pixels(images)
    assert stats["count"] == 4 and stats["source_images"] == 4
    assert stats["mean"] == pytest.approx(arr.mean(0).tolist(), abs=1e-3)
    assert stats["std"] == pytest.approx(arr.std(0).tolist(), abs=1e-3)


def test_folder_with_mirror(resized):
    result = run_cli("dataset", "-S", "dataset.format=folder", "-S", "dataset.mirror=true")
    assert result.exit_code == 0, result.output
    folder = resized / "data/dataset"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        ["dataset.json", "stats.json"]
        + [f"{a}{m}.png" for a in (10, 20, 30, 40) for m in ("", "_m")]
    )
    original = np.asarray(Image.open(folder / "20.png"))
    mirrored = np.asarray(Image.open(folder / "20_m.png"))
    assert np.array_equal(mirrored, original[:, ::-1])
    # the originals are the resize stage's files, byte for byte
    assert (folder / "30.png").read_bytes() == (resized / "data/resize/images/30.png").read_bytes()
    stats = json.loads((folder / "stats.json").read_text())
    arr = pixels(Image.open(folder / n) for n in names if n.endswith(".png"))
    assert stats["count"] == 8
    assert stats["mean"] == pytest.approx(arr.mean(0).tolist(), abs=1e-3)
    assert stats["std"] == pytest.approx(arr.std(0).tolist(), abs=1e-3)


def test_rerun_replaces_the_previous_dataset(resized):
    assert run_cli("dataset", "-S", "dataset.format=folder").exit_code == 0
    assert run_cli("dataset", "-S", "dataset.format=zip").exit_code == 0
    hidden = [p.name for p in (resized / "data").iterdir() if p.name.startswith(".")]
    assert [name for name in hidden if not name.endswith(".lock")] == []  # stage locks stay
    assert not (resized / "data/dataset/10.png").exists()
