"""The partial params files users apply with ``steamgan set-args``: params.quick.yaml (a
run that finishes on a CPU) and params.offline.yaml, alone and together, over the committed
params.yaml; and the train stage's warning that points a CPU user at the quick preset."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from pipeline.params import load_params
from pipeline.training.loop import QUICK_PRESET, slow_cpu_warning
from tests.conftest import REPO, allow_small_datasets, run_cli, write_shipped_params
from tests.train_helpers import flowers

PRESETS = ([], ["params.quick.yaml"], ["params.offline.yaml", "params.quick.yaml"])


def with_presets(tmp_path, files: list[str]):
    """The committed params with the presets' -S options applied, as dvc exp run does."""
    shipped = write_shipped_params(tmp_path / "params.yaml")
    printed = run_cli("set-args", *(str(REPO / f) for f in files)).output.split() if files else []
    assert printed[::2] == ["-S"] * (len(printed) // 2)
    return load_params(shipped, printed[1::2])


@pytest.mark.parametrize("files", PRESETS[1:], ids=lambda f: "+".join(f))
def test_presets_apply_cleanly_and_agree_with_themselves(files, tmp_path):
    p = with_presets(tmp_path, files)
    assert p.train.image_size == p.resize.size == 32  # the dataset the model is built for
    assert p.train.model == "lightweight" and p.train.lightweight.attn_res == []
    assert p.train.steps * p.train.batch_size <= 20_000  # ~2,000 steps at batch 8
    # nothing in the quick run waits on a weight download the offline run cannot make
    assert set(p.evaluate.metrics) <= {"fid", "kid", "precision_recall"}
    assert p.evaluate.pr_features == "inception"
    # a sample of Steam's app list, and the fast detector: the curation fits the budget too
    assert p.appids.limit and p.appids.limit <= 5000
    assert p.faces.detectors == ("retinaface",)
    assert p.faces.retinaface.variant == "mobilenet0.25_1mb"


def test_offline_with_quick_keeps_the_offline_sources(tmp_path):
    both = with_presets(tmp_path, ["params.offline.yaml", "params.quick.yaml"])
    offline = with_presets(tmp_path, ["params.offline.yaml"])
    assert both.appids.source == offline.appids.source == "steam"
    assert both.appids.steam_api_url == offline.appids.steam_api_url
    assert both.download == offline.download and both.dataset == offline.dataset
    assert both.faces == offline.faces  # quick's detector is the one offline has
    assert offline.download.cdn_url.startswith("http://127.0.0.1:")


def test_slow_cpu_warning_names_the_time_and_the_preset():
    line = slow_cpu_warning("cpu", 150_000, 2.5)
    assert line.startswith("warning: on the CPU these settings need about 4 days ")
    assert "(150,000 steps at 2.5 s each)" in line and QUICK_PRESET in line
    assert slow_cpu_warning("cuda", 150_000, 2.5) is None  # a GPU run is the shipped plan
    assert slow_cpu_warning("cpu", 2_000, 0.3) is None  # the quick preset: 10 minutes
    assert "about 7 hours" in slow_cpu_warning("cpu", 25_000, 1.0)


@pytest.mark.slow
def test_train_with_the_shipped_steps_on_a_cpu_warns_after_its_first_step(tmp_path):
    """The committed train settings (150,000 steps), on a 32 px dataset with batch 8 so that
    a step takes seconds: the stage says how long that would take and what to run instead,
    then goes on training until stopped."""
    allow_small_datasets(write_shipped_params(tmp_path / "params.yaml"))
    flowers(tmp_path / "data" / "dataset", count=8)
    overrides = ["-S", "train.image_size=32", "-S", "train.batch_size=8", "-S", "train.workers=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEAMGAN_PROGRESS_EVERY": "3600"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train", *overrides],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "warning: on the CPU" in line:
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    warning = lines[-1].strip()
    assert warning.startswith("train: warning: on the CPU these settings need about "), lines
    assert "150,000 steps" in warning or "149,999 steps" in warning
    assert warning.endswith(f"use the quick preset: {QUICK_PRESET} (README, Quick start)")
