"""Hostile inputs and faults (issue 12): locks, leaked temporaries, failed runs, bad input."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.images import ImageProblem, open_image
from pipeline.resize import resize_image
from tests.conftest import REPO, allow_small_datasets, run_cli
from tests.images import capsule, save

HOLD_LOCK = """
import sys, time
from pipeline.io import stage_lock
with stage_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold_lock(stage: str, cwd) -> subprocess.Popen:
    """Another process holding ``stage``'s lock in ``cwd``, as a second run would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, stage],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("stage", ["faces", "train", "dataset"])
def test_a_second_run_of_a_stage_is_refused_naming_folder_and_pid(stage, params_file):
    holder = hold_lock(stage, params_file.parent)
    try:
        result = run_cli(stage)
        assert result.exit_code == 1
        line = result.output.strip()
        assert len(line.splitlines()) == 1, line
        assert f"data/{stage} is in use by another '{stage}' run (pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a dead holder's lock: the next run gets past it (to its missing input)
    result = run_cli(stage)
    assert "in use" not in result.output


def test_dataset_removes_temporary_folders_of_killed_runs(capsules, params_file):
    root = allow_small_datasets(params_file).parent
    rows = []
    for appid in (10, 20):
        path = root / f"data/download/images/{appid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        capsule(appid).save(path)
        rows.append({"appid": appid, "path": f"data/download/images/{appid}.jpg"})
    upstream = root / pio.upstream_table("resize")
    upstream.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(upstream)
    assert run_cli("resize", "-S", "resize.size=32").exit_code == 0
    data = root / "data"
    leaked = [data / ".dataset.k1ll3d.part", data / ".dataset.old.part"]
    for folder in leaked:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "10.png").write_bytes(b"x" * 1000)
    other = data / ".render.x1.part"  # another stage's temporary: not dataset's to remove
    other.mkdir()
    result = run_cli("dataset", "-S", "dataset.format=folder")
    assert result.exit_code == 0, result.output
    assert not any(folder.exists() for folder in leaked)
    assert other.is_dir()
    assert sorted(p.name for p in (data / "dataset").iterdir())[:2] == ["10.png", "20.png"]


def sideways_jpeg(im: Image.Image, path: Path, orientation: int = 6) -> Path:
    """``im`` stored rotated with the EXIF Orientation tag that turns it upright again.

    6 means "rotate 90° clockwise to view"; the pixels are stored turned the other way.
    """
    stored = im.transpose(
        Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [6, 8])
def test_open_image_applies_the_exif_orientation(capsules, tmp_path, orientation):
    upright = capsule(2)
    path = sideways_jpeg(upright, tmp_path / "sideways.jpg", orientation)
    with Image.open(path) as stored:
        assert stored.size == (upright.height, upright.width)  # as stored: sideways
    im = open_image(path)
    assert im.size == upright.size
    # the same pixels as the upright picture, up to JPEG's loss
    diff = np.abs(np.asarray(im, np.int16) - np.asarray(upright, np.int16))
    assert diff.mean() < 4
    assert diff.mean() < np.abs(np.asarray(im, np.int16) - np.asarray(upright)[::-1, ::-1]).mean()


def test_every_stage_reads_sideways_banners_upright(capsules, params_file):
    """validate (size check), resize, and train's data reader see the upright banner."""
    upright = capsule(4).resize((300, 450))
    sideways_jpeg(upright, Path("data/download/images/7.jpg"))
    manifest = pd.DataFrame(
        {
            "appid": [7],
            "kind": ["library_600x900"],
            "status": ["ok"],
            "path": ["data/download/images/7.jpg"],
        }
    )
    manifest.to_parquet(write_dir("data/download") / "manifest.parquet")
    result = run_cli("validate", "-S", "validate.vignette=false")
    assert result.exit_code == 0, result.output
    assert pd.read_parquet("data/validate/accepted.parquet")["appid"].tolist() == [7]
    # faces would pass it on; resize reads it upright: a tall banner, cropped to its centre
    pd.read_parquet("data/validate/accepted.parquet").to_parquet(
        write_dir("data/faces") / "accepted.parquet"
    )
    assert run_cli("resize", "-S", "resize.size=64", "-S", "resize.mode=crop").exit_code == 0
    out = np.asarray(Image.open("data/resize/images/7.png"), np.int16)
    expected = np.asarray(resize_image(upright, 64, "crop"), np.int16)
    assert np.abs(out - expected).mean() < 4
    # a dataset folder of JPEGs with the tag trains upright too
    square = capsule(4).resize((64, 64))
    sideways_jpeg(square, Path("jpegs/a.jpg"))
    from pipeline.training.data import ImageDataset

    tensor = ImageDataset("jpegs")[0].permute(1, 2, 0).numpy().astype(np.int16)
    as_stored = np.asarray(square.transpose(Image.Transpose.ROTATE_90), np.int16)
    error = np.abs(tensor - np.asarray(square, np.int16)).mean()
    assert error < 8 and error < np.abs(tensor - as_stored).mean() / 4


def write_dir(path: str) -> Path:
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_open_image_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "1.jpg"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = tmp_path / "zero.jpg"
        path.symlink_to("/dev/zero")
    with pytest.raises(ImageProblem, match="unreadable: not a regular file"):
        open_image(path)


def test_a_fifo_named_jpg_does_not_hang_validate(capsules, params_file):
    save(capsule(1), Path("data/download/images/1.jpg"))
    os.mkfifo("data/download/images/2.jpg")
    manifest = pd.DataFrame(
        {
            "appid": [1, 2],
            "kind": ["capsule_184x69"] * 2,
            "status": ["ok"] * 2,
            "path": ["data/download/images/1.jpg", "data/download/images/2.jpg"],
        }
    )
    manifest.to_parquet("data/download/manifest.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "stages.validate", "-S", "validate.workers=1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rejected = pd.read_parquet("data/validate/rejected.parquet").set_index("appid")
    assert rejected.loc[2, "reason"] == "unreadable"
    assert rejected.loc[2, "detail"] == "not a regular file (a FIFO)"
    assert pd.read_parquet("data/validate/accepted.parquet")["appid"].tolist() == [1]


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """Every atomic write lands on /dev/full, which fails like a full disk (ENOSPC)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is absent")
    names = iter(range(1000))

    def temp_on_full_disk(path: Path) -> Path:
        link = tmp_path / f"full-{next(names)}"
        link.symlink_to("/dev/full")
        return link

    monkeypatch.setattr(pio, "_temp_path", temp_on_full_disk)


def write_checkpoint(path: Path) -> None:
    import torch

    from pipeline.training.checkpoint import save_checkpoint

    save_checkpoint(path, {"G": {"w": torch.zeros(10_000)}})


@pytest.mark.parametrize(
    "write",
    [
        lambda path: pio.write_table(path, pd.DataFrame({"appid": range(100_000)})),
        lambda path: pio.write_json(path, {"x": "y" * 100_000}),
        write_checkpoint,  # torch says "unexpected pos"
    ],
    ids=["parquet", "json", "torch"],
)
def test_a_full_disk_names_the_output(full_disk, tmp_path, write):
    path = tmp_path / "out" / "thing.bin"
    with pytest.raises(StageError) as error:
        write(path)
    message = str(error.value)
    assert message.startswith(f"{path}: could not be written, the disk is ")
    assert "full" in message and "free some space" in message
    assert not path.exists() and not list(tmp_path.glob("full-*"))  # no temporary left


def test_outputs_get_the_usual_modes_not_the_temporary_ones(tmp_path):
    """A stage's folder is built under mkdtemp's name (mode 700) and its files under mkstemp's
    (600): both are set to what the umask gives, so data/report/ can be served or shared."""
    umask = os.umask(0o022)
    try:
        with pio.atomic_dir(tmp_path / "report") as tmp:
            pio.write_json(tmp / "summary.json", {"ok": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "report/summary.json").stat().st_mode) == 0o644
