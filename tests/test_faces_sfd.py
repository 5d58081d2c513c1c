"""face_alignment's S3FD through our interface (random weights in a temp cache; the real
weights when they are in the cache), and dlib's HOG detector when dlib is installed."""

import numpy as np
import pytest
import torch

import pipeline.weights as weights
from pipeline.errors import StageError
from pipeline.faces import Faces, load_detector
from tests.faces_helpers import confusion, one_face_accuracy, shared_photos

pytest.importorskip("face_alignment", reason="the face-alignment package is not installed")


@pytest.fixture(scope="module")
def random_s3fd(tmp_path_factory):
    """A randomly initialised S3FD, saved where the weights cache would hold the real one."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("weights")
    path = cache / weights.WEIGHTS["s3fd"].file
    torch.save(s3fd().state_dict(), path)
    return path


def test_plumbing_with_random_weights(random_s3fd):
    det = load_detector("face_alignment", weights=random_s3fd, device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    images.append(rng.integers(0, 256, (64, 24, 3), dtype=np.uint8))  # padded in the batch
    found = det.detect(images)
    assert len(found) == 3 and all(isinstance(f, Faces) for f in found)
    for im, faces in zip(images, found, strict=True):
        h, w = im.shape[:2]
        assert faces.boxes.shape == (len(faces), 4) and faces.landmarks is None
        assert (faces.scores > 0.5).all() and (np.diff(faces.scores) <= 0).all()
        assert (faces.boxes >= 0).all() and (faces.boxes[:, [0, 2]] <= w).all()
        assert (faces.boxes[:, [1, 3]] <= h).all()
    assert det.config["weights_sha256"] == weights.sha256_file(random_s3fd)
    strict = load_detector("face_alignment", weights=random_s3fd, confidence=0.99, device="cpu")
    assert sum(len(f) for f in strict.detect(images)) < sum(len(f) for f in found)


def test_weights_come_from_the_registry_cache(random_s3fd, monkeypatch):
    """weights_dir + the registry's file name, checked against the registry's sha256."""
    with pytest.raises(StageError, match=r"s3fd-619a316812\.pth: sha256 .* not s3fd's"):
        load_detector("face_alignment", weights_dir=random_s3fd.parent, device="cpu")
    spec = weights.WEIGHTS["s3fd"]
    pinned = weights.WeightFile(
        spec.name, spec.file, spec.url, weights.sha256_file(random_s3fd), spec.about
    )
    monkeypatch.setitem(weights.WEIGHTS, "s3fd", pinned)
    det = load_detector("face_alignment", weights_dir=random_s3fd.parent, device="cpu")
    assert len(det.detect([np.zeros((32, 32, 3), np.uint8)])) == 1


def test_missing_and_damaged_weights_are_one_line(tmp_path):
    with pytest.raises(StageError) as err:
        load_detector("face_alignment", weights_dir=tmp_path, download=False)
    assert "s3fd-619a316812.pth" in str(err.value) and "adrianbulat.com" in str(err.value)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(StageError, match=r"bad\.pth: not an S3FD checkpoint"):
        load_detector("face_alignment", weights=tmp_path / "bad.pth")


def report(title: str, truth: list[int], counts: list[int], capsys) -> float:
    right, total = one_face_accuracy(truth, counts)
    with capsys.disabled():
        print(f"\n{title}\n{confusion(truth, counts).to_string()}")
        print(f"exactly-one-face decision right on {right}/{total}")
    return right / total


def test_real_s3fd_on_shared_faces(capsys):
    """Runs only when the real s3fd-619a316812.pth is in the weights cache."""
    path = weights.default_weights_dir() / weights.WEIGHTS["s3fd"].file
    if not path.is_file():
        pytest.skip(f"{path} is absent (real S3FD weights; see docs/curation.md, faces)")
    det = load_detector("face_alignment", confidence=0.5, device="cpu", batch_size=1)
    images, truth = shared_photos()
    counts = [len(f) for f in det.detect(images)]
    assert report("S3FD (face_alignment), long side 640", truth, counts, capsys) >= 0.85


def test_dlib_hog_on_shared_faces(capsys):
    pytest.importorskip("dlib", reason="dlib is not installed (pip install -e '.[dlib]')")
    det = load_detector("dlib", upsample=1)
    images, truth = shared_photos(480)
    found = det.detect(images)
    assert all(f.landmarks is None and (np.diff(f.scores) <= 0).all() for f in found)
    counts = [len(f) for f in found]
    assert report("dlib HOG, upsample 1, long side 480", truth, counts, capsys) >= 0.85
