"""Class-conditional StyleGAN2 on a labelled dataset (dataset.json with classes), through
the engine: labelled batches, one grid row per class, sampling by class, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.errors import StageError
from pipeline.models.base import set_noise_mode
from pipeline.models.stylegan2 import StyleGAN2
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
    set_noise_mode(trained.G, "const")  # the same noise maps in every call
    red, blue = (trained.sample(z, torch.full((3,), k)) for k in (0, 1))
    assert red.shape == (3, 3, 32, 32) and not torch.allclose(red, blue)
    again = trained.sample(z, torch.zeros(3, dtype=torch.long))
    assert torch.equal(again, red)  # a class's samples come from sample(labels=k) alone
    # truncation pulls towards the class's own average w: at psi 0 every z gives one image
    centre = trained.sample(z, torch.full((3,), 1), truncation_psi=0.0)
    assert torch.allclose(centre[0], centre[1], atol=1e-5)
    assert not torch.allclose(centre[0], trained.sample(z, torch.zeros(3), 0.0)[0], atol=1e-3)
    with pytest.raises(ValueError, match="conditional"):
        trained.sample(z)


def test_balanced_classes_feed_the_model_every_class_equally(tmp_path):
    """Six of one class, two of the other: balanced batches hold both about equally."""
    data = flowers(tmp_path / "uneven", count=8)
    names = sorted(p.name for p in data.glob("*.png"))
    labels = [[name, int(i >= 6)] for i, name in enumerate(names)]
    (data / "dataset.json").write_text(json.dumps({"labels": labels, "classes": ["a", "b"]}))
    seen = []

    class Counting(StyleGAN2):
        def d_loss(self, batch, ctx):
            seen.extend(batch.labels.tolist())
            return super().d_loss(batch, ctx)

    params = tiny_stylegan2(data, steps=6, balance_classes=True)
    train(
        params, tmp_path / "run", live_dir=None,
        model_factory=lambda p, num_classes: Counting(
            p.image_size, p.stylegan2, p.batch_size, num_classes=num_classes
        ),
    )  # fmt: skip
    assert len(seen) == 48 and 16 <= seen.count(1) <= 32  # unbalanced: 12 of 48 expected


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


def test_a_run_says_it_is_conditional_and_on_which_classes(labelled, tmp_path):
    """Training on a labelled dataset builds a class-conditional StyleGAN2: the run's
    summary says so, with the class names (it used to be silent)."""
    from pipeline.training.loop import run_summary

    trainer = Trainer(tiny_stylegan2(labelled, steps=1), tmp_path, live_dir=None)
    info = trainer.run_info()
    assert info["classes"] == ["red", "blue"] and info["dataset"]["images"] == 16
    line = run_summary(info)
    assert "stylegan2 32 px" in line and "16 images, conditional on 2 classes: red, blue" in line
    off = Trainer(
        tiny_stylegan2(labelled, steps=1, stylegan2={"conditional": False}),
        tmp_path / "u",
        live_dir=None,
    )
    assert off.run_info()["classes"] == [] and "16 images, unconditional" in run_summary(
        off.run_info()
    )
