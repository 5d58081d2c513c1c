"""Labelled training data: ImageDataset reads dataset.json's classes and labels (zip and
folder), ``with_labels`` items, the fingerprint, and StreamSampler's class-balanced stream."""

import hashlib
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.dataset import Member, write_folder, write_zip
from pipeline.errors import StageError
from pipeline.training.data import ImageDataset, StreamSampler
from tests.conftest import needs_shared

CLASSES = ["c1", "c2", "c3"]


def flower_members(folder: Path, per_class=(4, 2, 1)) -> list[Member]:
    """Real Oxford flowers of classes c1, c2, c3 (4, 2 and 1 of them) as 16 px PNGs, each a
    member ``<class>/<stem>.png`` with its class index."""
    source = needs_shared("data", "flowers256")
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for label, (name, count) in enumerate(zip(CLASSES, per_class, strict=True)):
        for path in sorted(source.glob(f"{name}_image_*.jpg"))[:count]:
            png = folder / f"{path.stem}.png"
            Image.open(path).convert("RGB").resize((16, 16)).save(png)
            items.append(Member(f"{name}/{path.stem}.png", str(png), False, label))
    return items


@pytest.fixture(params=["zip", "folder"])
def labelled(request, tmp_path) -> tuple[Path, list[Member]]:
    items = flower_members(tmp_path / "pngs")
    if request.param == "zip":
        path = tmp_path / "dataset.zip"
        write_zip(path, items, 1, lambda: None, CLASSES)
    else:
        path = tmp_path / "dataset"
        write_folder(path, items, 1, lambda: None, CLASSES)
    return path, items


def test_classes_and_labels_in_names_order(labelled):
    path, items = labelled
    dataset = ImageDataset(path)
    assert dataset.classes == CLASSES and dataset.num_classes == 3
    expected = {m.name: m.label for m in items}
    assert dataset.names == sorted(expected)
    assert dataset.labels.dtype == torch.int64
    assert dataset.labels.tolist() == [expected[n] for n in dataset.names]
    assert isinstance(dataset[0], torch.Tensor)  # with_labels off: images as before


def test_with_labels_items_and_batches(labelled):
    path, _ = labelled
    dataset = ImageDataset(path, with_labels=True)
    image, label = dataset[5]
    assert image.shape == (3, 16, 16) and label == dataset.labels[5].item()
    sampler = StreamSampler(len(dataset), 7, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    images, labels = next(iter(loader))
    indices = sampler.batch_indices(0)
    assert images.shape == (7, 3, 16, 16) and labels.dtype == torch.int64
    assert labels.tolist() == [dataset.labels[i].item() for i in indices]
    assert torch.equal(images[2], dataset[indices[2]][0])


def test_unlabelled_dataset_has_no_classes_and_refuses_with_labels(tmp_path):
    items = [Member(m.name, m.src, False) for m in flower_members(tmp_path / "pngs")]
    write_zip(tmp_path / "dataset.zip", items, 1, lambda: None)  # {"labels": null}
    dataset = ImageDataset(tmp_path / "dataset.zip")
    assert dataset.classes == [] and dataset.labels is None and dataset.num_classes == 0
    with pytest.raises(StageError, match=r"dataset.zip: has no labels \(dataset.json says none\)"):
        dataset.with_labels = True


def test_fingerprint_changes_with_labels_only_when_labelled(tmp_path):
    items = flower_members(tmp_path / "pngs")
    plain = [Member(m.name, m.src, False) for m in items]
    write_zip(tmp_path / "plain.zip", plain, 1, lambda: None)
    write_zip(tmp_path / "a.zip", items, 1, lambda: None, CLASSES)
    relabelled = [Member(m.name, m.src, False, 2 - m.label) for m in items]
    write_zip(tmp_path / "b.zip", relabelled, 1, lambda: None, CLASSES)
    unlabelled = ImageDataset(tmp_path / "plain.zip")
    # an unlabelled dataset's fingerprint is what it was before labels: names and sizes
    before = hashlib.sha256()
    for name, size in unlabelled.entries:
        before.update(f"{name}\0{size}\n".encode())
    assert unlabelled.fingerprint() == before.hexdigest()[:16]
    prints = {ImageDataset(tmp_path / f).fingerprint() for f in ("plain.zip", "a.zip", "b.zip")}
    assert len(prints) == 3


def test_check_drops_an_unreadable_image_and_its_label(tmp_path):
    items = flower_members(tmp_path / "pngs")
    Path(items[1].src).write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    write_folder(tmp_path / "dataset", items, 1, lambda: None, CLASSES)
    dataset = ImageDataset(tmp_path / "dataset", with_labels=True)
    assert list(dataset.check(16)) == [items[1].name]
    expected = {m.name: m.label for m in items}
    assert len(dataset.labels) == len(dataset.names) == len(items) - 1
    assert dataset.labels.tolist() == [expected[n] for n in dataset.names]
    assert [dataset[i][1] for i in range(len(dataset))] == dataset.labels.tolist()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"labels": [["c1/nope.png", 0]]}, r"labels name 1 file\(s\) not in the dataset"),
        ({"labels": "c1"}, r'"labels" must be a list of \[file name, class index\] pairs'),
        ("shift", r"has class 3, outside 0..2 \(3 classes\)"),
        ("drop", r"1 image\(s\) have no label"),
        ({"labels": [], "classes": "c1"}, r'"classes" must be a list of names'),
    ],
)
def test_dataset_json_that_does_not_fit_stops_in_one_line(tmp_path, meta, message):
    items = flower_members(tmp_path / "pngs")
    write_folder(tmp_path / "dataset", items, 1, lambda: None, CLASSES)
    path = tmp_path / "dataset" / "dataset.json"
    good = json.loads(path.read_text())
    if meta == "shift":
        meta = {**good, "labels": [[n, i + 1] for n, i in good["labels"]]}
    elif meta == "drop":
        meta = {**good, "labels": good["labels"][1:]}
    elif "classes" not in meta:
        meta = {**good, **meta}
    path.write_text(json.dumps(meta))
    with pytest.raises(StageError, match=message) as raised:
        ImageDataset(tmp_path / "dataset")
    assert "\n" not in str(raised.value) and "dataset.json" in str(raised.value)


def test_nvlabs_labels_without_class_names_number_the_classes(tmp_path):
    items = flower_members(tmp_path / "pngs")
    with zipfile.ZipFile(tmp_path / "nvlabs.zip", "w") as archive:
        for m in items:
            archive.write(m.src, m.name)
        archive.writestr("dataset.json", json.dumps({"labels": [[m.name, m.label] for m in items]}))
    dataset = ImageDataset(tmp_path / "nvlabs.zip")
    assert dataset.classes == ["0", "1", "2"]


# --- the class-balanced stream ------------------------------------------------------------

# 90 images of class 0, 9 of class 5, 1 of class 7: very imbalanced, class ids with gaps
IMBALANCED = [0] * 90 + [5] * 9 + [7]


def stream(sampler: StreamSampler, batches: int) -> list[int]:
    it = iter(sampler)
    return [index for _ in range(batches) for index in next(it)]


def test_balanced_stream_draws_each_class_equally_often():
    sampler = StreamSampler(len(IMBALANCED), 50, seed=3, labels=IMBALANCED, balance=True)
    drawn = stream(sampler, 600)  # 30,000 draws
    per_class = Counter(IMBALANCED[i] for i in drawn)
    assert set(per_class) == {0, 5, 7}
    for count in per_class.values():
        assert count / len(drawn) == pytest.approx(1 / 3, abs=0.015)
    # within a class, uniform: each of class 0's 90 images about 10,000 / 90 = 111 times
    within = Counter(i for i in drawn if IMBALANCED[i] == 0)
    assert len(within) == 90 and min(within.values()) > 60 and max(within.values()) < 170
    # unbalanced, the stream follows the data: class 7 is 1 % of it
    plain = stream(StreamSampler(len(IMBALANCED), 50, seed=3), 600)
    assert Counter(IMBALANCED[i] for i in plain)[7] == 300


def test_balanced_stream_is_deterministic_resumable_and_split_across_ranks():
    def sampler(**kw) -> StreamSampler:
        return StreamSampler(len(IMBALANCED), 8, seed=1, labels=IMBALANCED, balance=True, **kw)

    whole = stream(sampler(), 40)
    assert whole == stream(sampler(), 40)  # a pure function of (seed, position)
    assert whole != stream(StreamSampler(100, 8, seed=2, labels=IMBALANCED, balance=True), 40)
    assert stream(sampler(start=17), 23) == whole[17 * 8 :]  # a resumed run: the same tail
    ranks = [stream(sampler(rank=r, world=2, start=0), 40) for r in (0, 1)]
    for batch in range(40):
        assert (
            ranks[0][batch * 4 : batch * 4 + 4] + ranks[1][batch * 4 : batch * 4 + 4]
            == (whole[batch * 8 : batch * 8 + 8])
        )


def test_without_balance_or_labels_the_stream_is_today_s():
    plain = stream(StreamSampler(100, 8, seed=5, start=3), 30)
    assert stream(StreamSampler(100, 8, seed=5, start=3, labels=IMBALANCED), 30) == plain
    assert stream(StreamSampler(100, 8, seed=5, start=3, balance=True), 30) == plain
    # and today's is one fresh permutation per epoch
    assert sorted(stream(StreamSampler(100, 10, seed=5), 10)) == list(range(100))


def test_balance_needs_one_label_per_image():
    with pytest.raises(ValueError, match="99 labels for 100 images"):
        StreamSampler(100, 8, seed=0, labels=IMBALANCED[:-1], balance=True)
