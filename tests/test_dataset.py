import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline import io as pio
from pipeline.images import open_image
from pipeline.resize import resize_image
from tests.conftest import allow_small_datasets, run_cli
from tests.images import capsule, save


@pytest.fixture(autouse=True)
def small_datasets(params_file):
    """Four capsules make a dataset here; the shipped floor (100) has its own tests below."""
    allow_small_datasets(params_file)
    return params_file


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


TAGS = ["-S", "appids.source=steamspy", "-S", "appids.tags=[Anime, Horror]"]


@pytest.fixture
def labelled(capsules, params_file):
    """Four real capsules resized by the resize stage, whose upstream table carries labels:
    one app per tag, one with both, one with neither."""
    root = params_file.parent
    labels = {10: "Anime", 20: "Horror", 30: "Anime|Horror", 40: ""}
    rows = []
    for appid, cell in labels.items():
        path = root / f"data/download/images/{appid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        capsule(appid).save(path)
        rows.append({"appid": appid, "path": str(path.relative_to(root)), "labels": cell})
    upstream = root / pio.upstream_table("resize")
    upstream.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(upstream)
    assert run_cli("resize", "-S", "resize.size=32").exit_code == 0
    assert pd.read_parquet(root / "data/resize/accepted.parquet")["labels"].tolist() == list(
        labels.values()
    )  # resize carries the labels over
    return root


def read_zip_json(path, name="dataset.json"):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(name)), archive.namelist()


def test_tags_one_class_per_tag_first_listed_wins(labelled):
    result = run_cli("dataset", *TAGS, "-S", "dataset.labels=tags", "-S", "dataset.mirror=true")
    assert result.exit_code == 0, result.output
    out = labelled / "data/dataset"
    meta, names = read_zip_json(out / "dataset.zip")
    assert meta == {
        "labels": [
            ["10.png", 0], ["10_m.png", 0], ["20.png", 1], ["20_m.png", 1],
            ["30.png", 0], ["30_m.png", 0],
        ],
        "classes": ["Anime", "Horror"],
    }  # fmt: skip
    assert names[:-1] == [name for name, _ in meta["labels"]]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["classes"] == {"Anime": 4, "Horror": 2} and stats["count"] == 6
    assert stats["rejected"] == {"no_label": 1, "multi_label": 0}
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert rejected[["appid", "reason", "detail"]].values.tolist() == [
        [40, "no_label", "no labels"]
    ]
    assert "2 classes (Anime 4, Horror 2)" in result.output and "no_label 1" in result.output


def test_tags_in_another_order_or_dropping_multi_label_apps(labelled):
    reordered = ["-S", "appids.source=steamspy", "-S", "appids.tags=[Horror]"]
    reordered += ["-S", "appids.genres=[Anime]"]  # classes: tags, then genres
    result = run_cli("dataset", *reordered, "-S", "dataset.labels=tags")
    assert result.exit_code == 0, result.output
    meta, _ = read_zip_json(labelled / "data/dataset/dataset.zip")
    assert meta["classes"] == ["Horror", "Anime"]
    assert meta["labels"] == [["10.png", 1], ["20.png", 0], ["30.png", 0]]
    result = run_cli(
        "dataset", *TAGS, "-S", "dataset.labels=tags", "-S", "dataset.multi_label=drop",
        "-S", "dataset.format=folder",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = labelled / "data/dataset"
    assert json.loads((out / "dataset.json").read_text())["labels"] == [
        ["10.png", 0],
        ["20.png", 1],
    ]
    assert json.loads((out / "stats.json").read_text())["rejected"] == {
        "no_label": 1,
        "multi_label": 1,
    }
    rejected = pd.read_parquet(out / "rejected.parquet").set_index("appid")
    assert (
        rejected.loc[30, "reason"] == "multi_label" and rejected.loc[30, "detail"] == "Anime|Horror"
    )


def test_tags_without_any_class_stops_in_one_line(labelled):
    pd.DataFrame(
        {"appid": [10], "path": ["data/resize/images/10.png"], "labels": [""], "pixels": [1]}
    ).to_parquet(labelled / "data/resize/accepted.parquet")
    result = run_cli("dataset", "-S", "dataset.labels=tags")
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("steamgan dataset: error: dataset.labels=tags: no classes: set appids.tags")
    )


def class_tree(root, capsules_dir):
    """<root>/<class>/ folders of real capsules: Anime (3 JPEGs, one unreadable PNG, a text
    file), Horror (2 PNGs, a WebP, and a test/ folder of 2 JPEGs)."""
    for index, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        save(capsule(index), root / "Anime" / name)
    (root / "Anime" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "Anime" / "notes.txt").write_text("not an image")
    save(capsule(3), root / "Horror" / "d.png")
    save(capsule(4), root / "Horror" / "e.png")
    save(capsule(5), root / "Horror" / "e.webp")  # the same stem as e.png
    save(capsule(6), root / "Horror" / "test" / "f.jpg")
    save(capsule(7), root / "Horror" / "test" / "g.jpg")
    return root


def test_folders_one_class_per_folder_with_a_test_split(capsules, params_file):
    root = class_tree(params_file.parent / "mine", capsules)
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}",
        "-S", "resize.size=32", "-S", "dataset.format=folder",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = params_file.parent / "data/dataset"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == {
        "labels": [
            ["Anime/a.png", 0], ["Anime/b.png", 0], ["Anime/c.png", 0],
            ["Horror/d.png", 1], ["Horror/e.png", 1], ["Horror/e_webp.png", 1],
        ],
        "classes": ["Anime", "Horror"],
    }  # fmt: skip
    # each image is the resize stage's centre crop of its source, at resize.size
    for name, source in [("Anime/b.png", "Anime/b.jpg"), ("Horror/e_webp.png", "Horror/e.webp")]:
        expected = resize_image(open_image(root / source), 32, "crop")
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(expected))
    test, names = read_zip_json(out / "test.zip")
    assert test == {
        "labels": [["Horror/f.png", 1], ["Horror/g.png", 1]],
        "classes": meta["classes"],
    }
    assert names == ["Horror/f.png", "Horror/g.png", "dataset.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["count"] == 6 and stats["classes"] == {"Anime": 3, "Horror": 3}
    assert stats["test"] == {"count": 2, "classes": {"Anime": 0, "Horror": 2}}
    assert list(stats["rejected"]) == ["unreadable"] and stats["rejected"]["unreadable"] == 1
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert rejected["path"].tolist() == [str(root / "Anime" / "broken.png")]
    assert rejected["appid"].isna().all()
    assert not (out / ".resized").exists()
    images = [Image.open(out / name).convert("RGB") for name, _ in meta["labels"]]
    assert stats["mean"] == pytest.approx(pixels(images).mean(0).tolist(), abs=1e-3)


def test_folders_zip_with_mirror_keeps_each_copy_s_label(capsules, params_file):
    root = class_tree(params_file.parent / "mine", capsules)
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}",
        "-S", "resize.size=16", "-S", "dataset.mirror=true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta, names = read_zip_json(params_file.parent / "data/dataset/dataset.zip")
    assert ["Horror/d_m.png", 1] in meta["labels"] and ["Anime/a_m.png", 0] in meta["labels"]
    assert len(meta["labels"]) == 12 and names[:-1] == [name for name, _ in meta["labels"]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "is not a folder; point it at a folder of class folders"),
        (lambda root: root.mkdir(), "has no class folders; expected <root>/<class>/*.png"),
        (lambda root: (root / "Empty").mkdir(parents=True), "Empty has no images"),
    ],
)
def test_folders_layout_errors_are_one_line(params_file, make, message):
    root = params_file.parent / "mine"
    make(root)
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}"
    )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("steamgan dataset: error: dataset.folders_root: ") and message in last


@pytest.mark.parametrize("fmt", ["zip", "folder"])
def test_folders_names_that_differ_in_case_or_clash_with_a_mirror_all_kept(
    capsules, params_file, fmt
):
    """a.JPG, a.Jpg and a.jpg in one class (the fallback a_jpg.png was given twice), and
    b_m.png beside b.png with mirror on: every image keeps its own file, listed once."""
    root = params_file.parent / "mine"
    for index, name in enumerate(["a.JPG", "a.Jpg", "a.jpg", "b.png", "b_m.png"]):
        save(capsule(index), root / "Anime" / name, format="JPEG" if "j" in name.lower() else None)
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}",
        "-S", "resize.size=16", "-S", "dataset.mirror=true", "-S", f"dataset.format={fmt}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = params_file.parent / "data/dataset"
    if fmt == "zip":
        meta, names = read_zip_json(out / "dataset.zip")
        names = names[:-1]
        with zipfile.ZipFile(out / "dataset.zip") as archive:
            images = [np.asarray(Image.open(archive.open(name))) for name in names]
    else:
        meta = json.loads((out / "dataset.json").read_text())
        names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
        images = [np.asarray(Image.open(out / name)) for name in names]
    listed = [name for name, _ in meta["labels"]]
    assert len(listed) == len(set(listed)) == len(names) == 10
    assert sorted(listed) == sorted(names)
    assert json.loads((out / "stats.json").read_text())["count"] == 10
    assert {"Anime/a.png", "Anime/a_jpg.png", "Anime/b.png", "Anime/b_m.png"} <= set(names)
    # no two files hold one image (each source and its mirror written once)
    assert len({image.tobytes() for image in images}) == 10


def test_folders_class_whose_images_all_fail_to_read_stops(capsules, params_file):
    root = params_file.parent / "mine"
    save(capsule(0), root / "Anime" / "a.jpg")
    (root / "Horror").mkdir()
    (root / "Horror" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "Horror" / "y.jpg").write_bytes(b"not a jpeg")
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}",
        "-S", "resize.size=16",
    )  # fmt: skip
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        f"steamgan dataset: error: dataset.folders_root: {root / 'Horror'} has no readable "
        "image: its 2 file(s) could not be read (e.g. x.png: unreadable: "
    )
    assert last.endswith("; replace them or remove the folder")
    assert not (params_file.parent / "data/dataset").exists()


def test_too_few_images_stop_before_training_naming_the_stage_that_kept_few(resized):
    """The offline capsules are logos: the one-face rule keeps 1 of 364 and training ran on
    that image. The dataset stage stops first, naming the stage and its reasons."""
    data = resized / "data"
    pd.DataFrame({"status": ["ok"] * 364 + ["missing"] * 2}).to_parquet(
        data / "download/manifest.parquet"
    )
    (data / "validate").mkdir()
    pd.DataFrame({"appid": range(364)}).to_parquet(data / "validate/accepted.parquet")
    reasons = ["no_face"] * 300 + ["several_faces"] * 60
    pd.DataFrame({"appid": range(360), "reason": reasons}).to_parquet(
        data / "faces/rejected.parquet"
    )
    result = run_cli("dataset", "-S", "dataset.min_images=100")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("steamgan dataset: error: 4 image(s), fewer than dataset.min_images")
    assert "faces kept 4 of 364 (no_face 300, several_faces 60; data/faces/rejected.parquet)" in (
        line
    )
    assert "kept per stage: download 364 → validate 364 → faces 4 → resize 4" in line
    assert "dataset.min_images lower" in line
    assert not (data / "dataset").exists()  # nothing for train to pick up

    assert run_cli("dataset", "-S", "dataset.min_images=4").exit_code == 0


def test_the_shipped_floor_applies_to_class_folders_too(capsules, params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["dataset"].pop("min_images", None)  # back to the shipped value
    params_file.write_text(yaml.safe_dump(raw))
    root = class_tree(params_file.parent / "mine", capsules)
    result = run_cli(
        "dataset", "-S", "dataset.labels=folders", "-S", f"dataset.folders_root={root}"
    )
    assert result.exit_code == 1
    assert "image(s), fewer than dataset.min_images (100)" in result.output
