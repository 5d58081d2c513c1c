"""Class-conditional StyleGAN2 on a labelled dataset (dataset.json with classes), through
the engine: labelled batches, one grid row per class, sampling by class, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.errors import StageError
from pipeline.training.checkpoint import load_checkpoint, load_generator
from pipeline.training.loop import Trainer, train
from tests.train_helpers import flowers, tiny, tiny_stylegan2


def label_folder(folder: Path, classes: list[str]) -> Path:
    """Give the flowers alternating classes in NVlabs' dataset.json (plus our names)."""
    names = sorted(p.name for p in folder.glob("*.png"))
    labels = [[name, i % len(classes)] for i, name in enumerate(names)]
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "classes": classes}))
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return label_folder(flowers(tmp_path_factory.mktemp("labelled"), count=16), ["red", "blue"])


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conditional_stylegan2_trains_samples_by_class_and_resumes_exactly(labelled, tmp_path):
    params = tiny_stylegan2(labelled, steps=4, workers=2)
    straight = train(params, tmp_path / "a", live_dir=None)
    assert straight.model.num_classes == 2 and straight.dataset_classes == ["red", "blue"]
    assert straight.sample_grid().size == (4 * 32, 2 * 32)  # one row per class, 4 columns
    # each class has its own average w, moved by training from zero
    averages = straight.G_ema.mapper.w_avg_class
    assert averages.abs().sum(1).min() > 0 and not torch.equal(averages[0], averages[1])

    train(params, tmp_path / "b", live_dir=None, stop_at=2)
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert resumed.resumed and resumed.state.step == 4
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())

    checkpoint = load_checkpoint(tmp_path / "a/checkpoints/latest.pt")
    assert checkpoint["classes"] == ["red", "blue"]
    trained = load_generator(tmp_path / "a/checkpoints/latest.pt")
    assert trained.classes == ["red", "blue"]
    z = torch.randn(3, trained.latent_dim, generator=torch.Generator().manual_seed(0))
    red, blue = (trained.sample(z, torch.full((3,), k)) for k in (0, 1))
    assert red.shape == (3, 3, 32, 32) and not torch.allclose(red, blue)
    again = trained.sample(z, torch.zeros(3, dtype=torch.long))
    assert torch.equal(again, red)  # a class's samples come from sample(labels=k) alone
    # truncation pulls towards the class's own average w: at psi 0 every z gives one image
    centre = trained.sample(z, torch.full((3,), 1), truncation_psi=0.0)
    assert torch.allclose(centre[0], centre[1], atol=1e-5)
    with pytest.raises(ValueError, match="conditional"):
        trained.sample(z)


def test_labels_switch_conditioning_off_or_are_required(labelled, tmp_path):
    off = tiny_stylegan2(labelled, steps=1, stylegan2={"conditional": False})
    assert Trainer(off, tmp_path / "off", live_dir=None).model.num_classes == 0
    lightweight = Trainer(tiny(labelled, steps=1), tmp_path / "lw", live_dir=None)
    assert lightweight.model.num_classes == 0  # an unconditional model ignores the labels
    plain = flowers(tmp_path / "plain", count=8)
    on = tiny_stylegan2(plain, steps=1, stylegan2={"conditional": True})
    with pytest.raises(StageError, match="conditional: true needs a labelled dataset"):
        Trainer(on, tmp_path / "on", live_dir=None)
    with pytest.raises(StageError, match="balance_classes"):
        Trainer(tiny(plain, steps=1, balance_classes=True), tmp_path / "bal", live_dir=None)
