"""Hostile inputs and faults (issue 12): locks, leaked temporaries, failed runs, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from pipeline import io as pio
from tests.conftest import REPO, run_cli
from tests.images import capsule

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
    root = params_file.parent
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
