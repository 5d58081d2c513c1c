"""Gradient flow: mean |grad| per layer group of every trained network, every log step,
for every model, as a long table DVC plots with the repository's grad_flow template."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.training.logger import layer_group
from pipeline.training.loop import train
from tests.train_helpers import flowers, tiny, tiny_stylegan2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return flowers(tmp_path_factory.mktemp("flowers"), count=16)


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_layer_groups_stop_at_the_first_block_index():
    assert layer_group("synthesis_net.blocks.3.conv0.affine.weight") == "synthesis_net.blocks.3"
    assert layer_group("mapper.layers.1.weight") == "mapper.layers.1"
    assert layer_group("epilogue.fc.weight") == "epilogue.fc"
    assert layer_group("weight") == "weight"


@pytest.mark.parametrize("make", [tiny, tiny_stylegan2], ids=["lightweight", "stylegan2"])
def test_every_model_logs_gradient_flow_per_layer(make, data, tmp_path):
    live = tmp_path / "live"
    trainer = train(make(data, steps=3, log_every=2), tmp_path / "run", live_dir=live)
    table = rows(live / "plots/custom/grad_flow.tsv")
    assert {r["step"] for r in table} == {"2", "3"}  # log_every steps and the last one
    for network, module in trainer.model.trained_modules().items():
        expected = {layer_group(n) for n, p in module.named_parameters() if p.requires_grad}
        logged = {r["layer"] for r in table if r["network"] == network and r["step"] == "2"}
        assert logged == expected, network
    values = [float(r["grad"]) for r in table]
    assert all(math.isfinite(v) and v >= 0 for v in values) and max(values) > 0
    # a longer run appends; a resumed run first drops rows its checkpoint does not hold
    train(make(data, steps=4, log_every=2), tmp_path / "run", live_dir=live)
    steps = [int(r["step"]) for r in rows(live / "plots/custom/grad_flow.tsv")]
    assert sorted(set(steps)) == [2, 3, 4] and steps == sorted(steps)


def test_dvc_plots_the_table_with_the_repository_template(data, tmp_path):
    live = tmp_path / "live"
    train(tiny_stylegan2(data, steps=2, log_every=1), tmp_path / "run", live_dir=live)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=repo, check=True)
    (repo / ".dvc/plots").mkdir()
    shutil.copy(ROOT / ".dvc/plots/grad_flow.json", repo / ".dvc/plots/grad_flow.json")
    shutil.copy(live / "plots/custom/grad_flow.tsv", repo / "grad_flow.tsv")
    shown = subprocess.run(
        ["dvc", "plots", "show", "grad_flow.tsv", "--template", "grad_flow", "-x", "step",
         "-y", "grad", "--show-vega"],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    spec = json.loads(shown.stdout)
    assert spec["facet"]["row"]["field"] == "network"
    assert spec["spec"]["encoding"]["color"]["field"] == "layer"
    networks = {value["network"] for value in spec["data"]["values"]}
    assert networks == {"G", "D"}
