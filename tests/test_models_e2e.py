"""Every model through DVC as a user switches between them: ``dvc repro`` with
``train.model: dcgan``, then ``dvc exp run -S train.model=progan`` and ``=stargan2`` on class
folders. A module apart from test_pipeline_e2e, with its own scratch repository, so that
pytest-xdist runs the two on separate workers."""

import json
import shutil

import pytest

from tests.conftest import needs_shared
from tests.e2e_helpers import (
    commit,
    dvc,
    pipeline_overrides,
    scratch_repo,
)

pytestmark = pytest.mark.slow


def dcgan_overrides() -> list[str]:
    """Tiny DCGAN and progressive DCGAN sections at 32 px (progan: 16 px for 2 steps of 8
    images, then 32 px, fading in over 1 step)."""
    section = {"latent_dim": 16, "channels": 4, "channel_max": 16}
    stages = [{"size": 16, "kimg": 0.016}, {"size": 32, "kimg": 1}]
    return [
        *(
            f"train.{model}.{key}={value}"
            for model in ("dcgan", "progan")
            for key, value in section.items()
        ),
        f"train.progan.stages={json.dumps(stages)}",
        "train.progan.fade_kimg=0.008",
    ]


def test_dvc_repro_dcgan_then_exp_run_progan_and_stargan2(steam, tmp_path):
    """DCGAN as the base run, progressive DCGAN and StarGAN v2 as experiments (only train and
    what follows it rerun for progan): checkpoints, sample grids, a finite FID, renders, and
    StarGAN v2's translations and its own metrics."""
    from pipeline.training.checkpoint import load_checkpoint

    overrides = [
        *pipeline_overrides(steam, tmp_path),
        *dcgan_overrides(),
        "appids.limit=40",
        "train.model=dcgan",
        "evaluate.metrics=[fid]",  # test_pipeline_e2e runs the default list
    ]
    repo = scratch_repo(tmp_path, overrides)
    dvc("repro", cwd=repo)
    commit(repo, "dcgan")
    for model in ("dcgan", "progan"):
        if model == "progan":
            out = dvc("exp", "run", "-S", "train.model=progan", cwd=repo)
            assert "Running stage 'train'" in out and "Running stage 'dataset'" not in out
        checkpoint = load_checkpoint(repo / "data/train/checkpoints/latest.pt")
        assert checkpoint["model"] == model and checkpoint["state"]["step"] == 4
        assert checkpoint["augment"]["kind"] == "none"
        assert checkpoint["G_ema"]["stage_size"].item() == 32
        assert (repo / "dvclive/plots/images/samples/0000004.png").exists()
        evaluated = json.loads((repo / "data/evaluate/metrics.json").read_text())
        assert evaluated["fid"] > 0 and evaluated["fid"] < float("inf"), model
        summary = json.loads((repo / "data/render/render.json").read_text())
        assert summary["model"] == model
    live = json.loads((repo / "dvclive/metrics.json").read_text())
    assert live["progan"]["size"] == 32 and live["progan"]["alpha"] == 1.0

    # StarGAN v2 on the user's own class folders (dataset.labels: folders, with test/)
    folders = tmp_path / "domains"
    for domain in ("c1", "c2"):
        pictures = sorted(needs_shared("data", "flowers256").glob(f"{domain}_image_*.jpg"))
        for number, picture in enumerate(pictures[:6]):
            target = folders / domain / ("test" if number >= 4 else "") / picture.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(picture, target)
    section = {"channels": 8, "max_channels": 32, "style_dim": 16, "mapping_dim": 32}
    dvc(
        "exp", "run", "-S", "train.model=stargan2", "-S", "dataset.labels=folders",
        "-S", f"dataset.folders_root={folders}", "-S", "translate.max_images=2",
        "-S", "evaluate.metrics=[fid,translation]",
        *(arg for key, value in section.items() for arg in ("-S", f"train.stargan2.{key}={value}")),
        cwd=repo,
    )  # fmt: skip
    checkpoint = load_checkpoint(repo / "data/train/checkpoints/latest.pt")
    assert checkpoint["model"] == "stargan2" and checkpoint["classes"] == ["c1", "c2"]
    assert set(checkpoint["ema"]) >= {"mapping", "style_encoder"}  # averaged beside G
    translated = json.loads((repo / "data/translate/translate.json").read_text())
    assert translated["complete"] and translated["written"] > 0
    summary = json.loads((repo / "data/render/render.json").read_text())
    assert summary["model"] == "stargan2" and "translation" in summary["rendered"]
    # StarGAN v2's own metrics: FID per target domain of the held-out images' translations
    evaluated = json.loads((repo / "data/evaluate/metrics.json").read_text())
    assert set(evaluated["fid_latent"]) == {"c1", "c2"}, evaluated
    assert 0 < evaluated["fid_mean_reference"] < float("inf")
