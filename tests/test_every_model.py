"""Every model from the committed params.yaml by changing ``train.model`` alone (and, for
StarGAN v2, the labels it needs): a user's ``-S train.model=<m>`` must never stop on another
section's default, as ``progan.stages`` once did at 256 px.

On a 32 px dataset each model trains one step through ``steamgan train`` at the shipped
widths, with the batch cut to 2 (one step at batch 64 took minutes on 2 cores). At the
shipped 256 px the networks are built from the same params and checked, without a step.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.dataset import Member, write_zip
from pipeline.models import registry
from pipeline.training.checkpoint import load_checkpoint
from tests.conftest import allow_small_datasets, needs_shared, run_cli, write_shipped_params

MODELS = tuple(registry.MODELS)  # every model in the table, a new one included
# what StarGAN v2 needs besides its name: class folders as the dataset (docs/curation.md, dataset)
LABELS = ("-S", "dataset.labels=folders", "-S", "dataset.folders_root=domains")


@pytest.fixture(scope="module")
def flowers() -> list[Path]:
    source = needs_shared("data", "flowers256")
    return [p for c in ("c1", "c2") for p in sorted(source.glob(f"{c}_image_*.jpg"))[:4]]


def project(root: Path, flowers: list[Path], labelled: bool) -> Path:
    """A folder with the committed params.yaml and a 32 px dataset where train.data expects
    it: made by the dataset stage from class folders (labelled), else the resize stage's
    PNGs written as dataset.zip."""
    root.mkdir()
    allow_small_datasets(write_shipped_params(root))
    with contextlib.chdir(root):
        if labelled:
            for picture in flowers:
                target = root / "domains" / picture.name[:2] / picture.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(picture, target)
            result = run_cli("dataset", *LABELS, "-S", "resize.size=32")
            assert result.exit_code == 0, result.output
        else:
            from pipeline.images import open_image

            pngs = root / "pngs"
            pngs.mkdir()
            for picture in flowers:
                image = open_image(picture).resize((32, 32))
                image.save(pngs / f"{picture.stem}.png")
            items = [Member(p.name, str(p), False) for p in sorted(pngs.glob("*.png"))]
            (root / "data/dataset").mkdir(parents=True)
            write_zip(root / "data/dataset/dataset.zip", items, 0, lambda *_: None)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_a_model_by_its_name_alone_trains_on_a_32px_dataset(model, flowers, tmp_path):
    root = project(tmp_path / model, flowers, labelled=model == "stargan2")
    with contextlib.chdir(root):
        result = run_cli(
            "train", "-S", f"train.model={model}", "-S", "train.steps=1",
            "-S", "train.batch_size=2", "-S", "train.image_size=32",
            *(LABELS if model == "stargan2" else ()),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        checkpoint = load_checkpoint(Path("data/train/checkpoints/latest.pt"))
    assert checkpoint["model"] == model and checkpoint["state"]["step"] == 1
    assert f"train: {model}" in result.output  # the run's summary line names it


def test_stargan2_without_labels_stops_naming_dataset_labels(flowers, tmp_path):
    root = project(tmp_path / "plain", flowers, labelled=False)
    with contextlib.chdir(root):
        result = run_cli(
            "train", "-S", "train.model=stargan2", "-S", "train.steps=1",
            "-S", "train.image_size=32",
        )  # fmt: skip
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if "error" in line]
    assert "needs a labelled dataset (dataset.labels: tags or folders)" in line


@pytest.mark.parametrize("model", MODELS)
def test_a_model_by_its_name_alone_builds_at_the_shipped_256px(model, shipped_params):
    """The shipped image size with every other train key as committed: the params validate
    and the networks are built for 256 px (a step there is the GPU check's)."""
    import yaml

    from pipeline.models import build_model
    from pipeline.training.params import TrainParams

    settings = dict(yaml.safe_load(shipped_params.read_text())["train"], model=model)
    params = TrainParams(**settings)
    assert params.image_size == 256
    built = build_model(params, num_classes=2 if model == "stargan2" else 0).eval()
    z = torch.randn(1, built.latent_dim)
    labels = torch.tensor([1]) if built.num_classes else None
    with torch.no_grad():
        images = built.sample(z, labels)
    assert images.shape == (1, 3, 256, 256) and torch.isfinite(images).all()
