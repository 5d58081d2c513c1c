"""What the end-to-end tests share: ``dvc`` in a subprocess, a scratch repository of the
pipeline's files with params pointed at the fake Steam, and the tiny settings that keep a
whole ``dvc repro`` to a minute on a CPU."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.weights import WEIGHTS
from tests.conftest import REPO, needs_shared, steam_overrides, write_shipped_params
from tests.fake_steam import FakeSteam


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


def faces_overrides(tmp_path: Path) -> list[str]:
    """The faces stage on the capsules, fast and real: RetinaFace MobileNet-0.25 (the shared
        1MB checkpoint, copied into a scratch weights cache under its registry name) at long side
        320, keeping banners with no face, since Steam's capsules are mostly logos; a dataset of
    any size goes on to training."""
    weights = needs_shared("weights", "retinaface_mobilenet0.25.pth")
    cache = tmp_path / "weights"
    cache.mkdir()
    shutil.copy(weights, cache / WEIGHTS["retinaface_mobilenet0.25_1mb"].file)
    return [
        "faces.detectors=[retinaface]",
        "faces.resolutions=[original]",
        "faces.require_exactly=0",
        f"faces.weights_dir={cache}",
        "faces.download_weights=false",
        "faces.retinaface.variant=mobilenet0.25_1mb",
        "faces.retinaface.confidence=0.9",
        "faces.retinaface.nms=0.4",
        "faces.retinaface.max_size=320",
        # the fixture's few dozen capsules are a dataset far below the shipped floor of 100
        "dataset.min_images=1",
    ]


def train_overrides() -> list[str]:
    """A tiny Lightweight GAN on the 32×32 dataset: a few CPU seconds. The data path is the
    shipped one (dataset.zip read by train.workers: 2 loader processes)."""
    return [
        "resize.size=32",
        "train.image_size=32",
        "train.steps=4",
        "train.batch_size=8",
        "train.checkpoint_every=2",
        "train.sample_every=2",
        "train.log_every=1",
        "train.grid=[2, 4]",
        "train.lightweight.latent_dim=32",
        "train.lightweight.channels=8",
        "train.lightweight.attn_res=[16]",
        "render.grid=[2, 3]",
        "render.seeds=[0, 1]",
        "render.frames=4",
        "render.w_samples=500",
        "render.mixing.rows=[1, 2]",
        "render.mixing.cols=[3, 4]",
        "render.directions.count=2",
        "render.directions.steps=3",
        "render.project.targets=2",
        "render.project.steps=2",  # each step runs Inception (no LPIPS weights): seconds
        "render.project.video_every=1",
        "render.project.download_weights=false",  # no test touches the network
    ]


def evaluate_overrides(tmp_path: Path) -> list[str]:
    """reference and evaluate on 8 real and 8 generated images (Inception is slow on a CPU),
    the shared RetinaFace from faces_overrides' weights cache, no LPIPS weights (PPL null)."""
    return [
        "reference.max_images=8",
        "reference.workers=0",
        "evaluate.num_images=8",
        "evaluate.batch_size=8",
        "evaluate.kid_subsets=5",
        "evaluate.ppl_samples=4",
        "evaluate.device=cpu",
        f"evaluate.weights_dir={tmp_path / 'weights'}",
        "evaluate.download_weights=false",
    ]


def pipeline_overrides(steam: FakeSteam, tmp_path: Path) -> list[str]:
    """The whole tiny pipeline's settings: the fake Steam, the shared RetinaFace, a tiny
    Lightweight GAN and an 8-image evaluation."""
    return [
        *steam_overrides(steam),
        *faces_overrides(tmp_path),
        *train_overrides(),
        *evaluate_overrides(tmp_path),
    ]


def scratch_repo(tmp_path: Path, overrides: list[str]) -> Path:
    """The pipeline's files (not data/) in a new git + DVC repository, params pointed at
    the fake Steam (``section.key=value`` or ``section.sub.key=value``)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    write_shipped_params(repo / "params.yaml")
    set_params(repo, overrides)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    shutil.copytree(REPO / ".dvc/plots", repo / ".dvc/plots")  # dvc.yaml's plot templates
    commit(repo, "pipeline")  # as a clone is: DVCLive needs a repository with a commit
    return repo


def set_params(repo: Path, overrides: list[str]) -> None:
    """Edit the repository's params.yaml (``section.key=value`` or ``section.sub.key=value``,
    values in YAML) as a user would, for settings ``dvc exp run -S`` cannot spell."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, name = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[name] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message],
        cwd=repo,
        check=True,
    )
