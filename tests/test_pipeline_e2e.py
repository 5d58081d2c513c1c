"""``dvc repro`` of the whole curation pipeline in a scratch copy of the repository."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, steam_overrides

pytestmark = pytest.mark.slow


def dvc(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def scratch_repo(tmp_path: Path, overrides: list[str]) -> Path:
    """The pipeline's files (not data/) in a new git + DVC repository, params pointed at
    the fake Steam."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    return repo


def test_dvc_repro_curates_then_does_nothing(steam, tmp_path):
    repo = scratch_repo(tmp_path, steam_overrides(steam))
    first = dvc("repro", cwd=repo)
    for stage in ("appids", "download", "validate", "resize", "dataset"):
        assert f"Running stage '{stage}'" in first

    appids = pd.read_parquet(repo / "data/appids/appids.parquet")
    assert appids["appid"].tolist() == steam.app_ids()
    manifest = pd.read_parquet(repo / "data/download/manifest.parquet").set_index("appid")
    assert manifest.loc[9_000_001, "status"] == "missing"
    assert manifest.loc[9_000_004, "status"] == "invalid"
    assert manifest.loc[9_000_011, "status"] == "error"
    rejected = pd.read_parquet(repo / "data/validate/rejected.parquet").set_index("appid")
    expected = {
        9_000_005: "truncated",
        9_000_006: "mode",
        9_000_007: "mode",
        9_000_008: "blank",
        9_000_009: "vignette",
        9_000_010: "near_duplicate",
    }
    assert {a: rejected.loc[a, "reason"] for a in expected} == expected
    accepted = pd.read_parquet(repo / "data/validate/accepted.parquet")
    assert {9_000_002, 9_000_003} <= set(accepted["appid"])  # retried, then fine
    assert set(accepted["appid"]).isdisjoint(expected)
    assert len(accepted) + len(rejected) == (manifest["status"] == "ok").sum()
    # real oddities among the shared capsules: eight are 183 px wide, one is 184×67 CMYK
    assert (rejected["reason"] == "wrong_size").sum() >= 8

    resized = pd.read_parquet(repo / "data/resize/accepted.parquet")
    assert resized["appid"].tolist() == accepted["appid"].tolist()
    with zipfile.ZipFile(repo / "data/dataset/dataset.zip") as archive:
        names = set(archive.namelist())
    assert names == {f"{a}.png" for a in accepted["appid"]} | {"dataset.json"}
    stats = json.loads((repo / "data/dataset/stats.json").read_text())
    assert stats["count"] == len(accepted)
    assert "data/dataset/stats.json" in dvc("metrics", "show", cwd=repo)

    second = dvc("repro", cwd=repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second


def test_dvc_exp_run_set_param_reruns_only_downstream(steam, tmp_path):
    repo = scratch_repo(tmp_path, [*steam_overrides(steam), "appids.limit=40"])
    dvc("repro", cwd=repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"],
        cwd=repo,
        check=True,
    )
    before = json.loads((repo / "data/dataset/stats.json").read_text())
    out = dvc("exp", "run", "-S", "dataset.mirror=true", cwd=repo)
    assert "Running stage 'dataset'" in out
    for stage in ("appids", "download", "validate", "resize"):
        assert f"Running stage '{stage}'" not in out
    after = json.loads((repo / "data/dataset/stats.json").read_text())
    assert after["count"] == 2 * before["count"]
    assert after["mean"] == before["mean"]
