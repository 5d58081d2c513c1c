"""Our RetinaFace: the network against real checkpoints' layout, anchors, decoding, batched
NMS, and the real MobileNet-0.25 checkpoint on ../shared/data/faces."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.errors import StageError
from pipeline.faces import DETECTORS, Faces, load_detector
from pipeline.faces.base import batched_nms, pad_to_batch, suppress_contained
from pipeline.faces.retinaface import (
    VARIANTS,
    RetinaFaceNet,
    decode_boxes,
    map_checkpoint_keys,
    prior_boxes,
)
from pipeline.images import open_image, to_rgb
from tests.conftest import needs_shared
from tests.faces_helpers import confusion, one_face_accuracy, shared_photos


@pytest.fixture(scope="module")
def shared_weights():
    return needs_shared("weights", "retinaface_mobilenet0.25.pth")


@pytest.fixture(scope="module")
def random_mobilenet(tmp_path_factory):
    """A randomly initialised MobileNet-0.25 RetinaFace checkpoint (release variant)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.pth"
    torch.save(RetinaFaceNet("mobilenet0.25", 0.1).state_dict(), path)
    return path


def test_mobilenet_matches_the_real_checkpoint_layout(shared_weights):
    real = torch.load(shared_weights, map_location="cpu", weights_only=True)
    ours = RetinaFaceNet("mobilenet0.25", 0.0).state_dict()
    assert set(ours) == set(real) and len(real) == 300
    assert all(ours[k].shape == real[k].shape for k in real)


def test_resnet50_has_torchvision_names_and_biubug6_heads():
    state = RetinaFaceNet("resnet50", 0.0).state_dict()
    assert state["body.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["body.layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert state["body.layer4.2.bn3.running_var"].shape == (2048,)
    assert state["fpn.output3.0.weight"].shape == (256, 2048, 1, 1)
    assert state["ssh1.conv7x7_3.0.weight"].shape == (64, 64, 3, 3)
    assert state["ClassHead.2.conv1x1.weight"].shape == (4, 256, 1, 1)
    assert state["LandmarkHead.0.conv1x1.bias"].shape == (20,)


def test_checkpoint_key_prefixes_are_mapped():
    state = {"module.fpn.a": 1, "model.ssh1.b": 2, "body.fc.weight": 3, "ClassHead.0.c": 4}
    assert map_checkpoint_keys(state) == {"fpn.a": 1, "ssh1.b": 2, "ClassHead.0.c": 4}


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_heads_cover_every_anchor(backbone):
    net = RetinaFaceNet(backbone, 0.0).eval()
    with torch.inference_mode():
        deltas, logits, marks = net(torch.zeros(2, 3, 96, 160))
    anchors = len(prior_boxes(96, 160, (8, 16, 32), VARIANTS["resnet50"].min_sizes))
    assert anchors == 2 * (12 * 20 + 6 * 10 + 3 * 5)
    assert deltas.shape == (2, anchors, 4) and logits.shape == (2, anchors, 2)
    assert marks.shape == (2, anchors, 10)


def test_priors_follow_the_heads_order():
    priors = prior_boxes(64, 96, (8, 16, 32), ((10, 20), (32, 64), (128, 256)))
    # level 1: row 0, column 0, both sizes; then column 1
    assert priors[:3].tolist() == [[4, 4, 10, 10], [4, 4, 20, 20], [12, 4, 10, 10]]
    # first anchor of level 2 comes after 8×12 positions × 2 sizes
    assert priors[8 * 12 * 2].tolist() == [8, 8, 32, 32]
    assert priors[-1].tolist() == [80, 48, 256, 256]


def test_decoding_zero_deltas_gives_the_anchor():
    priors = torch.tensor([[50.0, 40.0, 20.0, 10.0]])
    assert decode_boxes(torch.zeros(1, 4), priors, (0.1, 0.2)).tolist() == [[40, 35, 60, 45]]
    moved = decode_boxes(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), priors, (0.1, 0.2))
    assert moved.tolist() == [[42, 35, 62, 45]]  # 1 × 0.1 × width 20 = 2 px right


def test_batched_nms_keeps_groups_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    groups = torch.tensor([0, 0, 1, 1])
    # box 1 overlaps box 0 in its own image; box 2 is identical to box 0 but in image 1
    assert batched_nms(boxes.float(), scores, groups, 0.5).tolist() == [0, 2, 3]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0


def test_padding_fills_with_the_mean_colour_and_is_channels_last():
    a, b = torch.zeros(3, 5, 7), torch.ones(3, 40, 9)
    batch = pad_to_batch([a, b], (1.0, 2.0, 3.0))
    assert batch.shape == (2, 3, 64, 32)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert batch[0, :, 4, 6].tolist() == [0, 0, 0] and batch[0, :, 5, 6].tolist() == [1, 2, 3]
    assert batch[1, :, 39, 8].tolist() == [1, 1, 1] and batch[1, :, 39, 9].tolist() == [1, 2, 3]


def test_detector_plumbing_with_random_weights(random_mobilenet):
    """Any sizes in, one Faces each, in order, boxes inside the input's pixels."""
    det = load_detector(
        "retinaface", variant="mobilenet0.25", weights=random_mobilenet, confidence=0.3,
        nms=0.4, max_size=0, device="cpu", batch_size=4,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    images.append(rng.integers(0, 256, (17, 90, 3), dtype=np.uint8))
    found = det.detect(images)
    assert len(found) == 4 and all(isinstance(f, Faces) for f in found)
    for im, faces in zip(images, found, strict=True):
        h, w = im.shape[:2]
        assert faces.boxes.shape == (len(faces), 4) and faces.landmarks.shape == (len(faces), 5, 2)
        assert (faces.boxes[:, [0, 2]] <= w).all() and (faces.boxes[:, [1, 3]] <= h).all()
        assert (faces.boxes >= 0).all() and (np.diff(faces.scores) <= 0).all()
    assert det.detect([]) == []


def banners(count: int) -> list[np.ndarray]:
    """Real photos of ../shared/data/faces stretched to the 300×450 banner size."""
    folder = needs_shared("data", "faces")
    names = sorted(p.name for p in folder.glob("*.jp*g"))[:count]
    out = []
    for name in names:
        im = Image.open(folder / name)
        im.draft("RGB", (300, 450))  # JPEG decodes at a reduced scale: much faster
        out.append(np.asarray(to_rgb(im).resize((300, 450), Image.Resampling.BILINEAR)))
    return out


def test_batched_equals_one_at_a_time_with_real_weights(shared_weights):
    """Banners of one size share a batch with no padding: results as one image at a time."""
    images = banners(4)
    det = load_detector(
        "retinaface", variant="mobilenet0.25_1mb", weights=shared_weights, confidence=0.5,
        max_size=0, device="cpu", batch_size=4,
    )  # fmt: skip
    batched = det.detect(images)
    assert sum(len(f) for f in batched) >= 3
    for im, faces in zip(images, batched, strict=True):
        alone = det.detect([im])[0]
        np.testing.assert_allclose(alone.boxes, faces.boxes, atol=1e-2)
        np.testing.assert_allclose(alone.scores, faces.scores, atol=1e-4)


def test_max_size_boxes_come_back_in_input_pixels(shared_weights):
    """A real face found at max_size 320 is where it is found in a 320 px copy, scaled back."""
    photo = to_rgb(open_image(needs_shared("data", "faces", "deepface__img46.jpg")))  # 400×500
    options = dict(variant="mobilenet0.25_1mb", weights=shared_weights, device="cpu")
    scaled = load_detector("retinaface", max_size=320, **options).detect([np.asarray(photo)])[0]
    copy = np.asarray(photo.resize((256, 320), Image.Resampling.BILINEAR))
    as_is = load_detector("retinaface", max_size=0, **options).detect([copy])[0]
    assert len(scaled) == len(as_is) == 1
    np.testing.assert_allclose(scaled.boxes, as_is.boxes * 400 / 256, atol=4)
    np.testing.assert_allclose(scaled.landmarks, as_is.landmarks * 400 / 256, atol=4)
    x1, y1, x2, y2 = scaled.boxes[0]
    assert 0 <= x1 < x2 <= 400 and 0 <= y1 < y2 <= 500


def test_bad_input_and_options_are_clear_errors(random_mobilenet):
    det = load_detector("retinaface", variant="mobilenet0.25", weights=random_mobilenet)
    with pytest.raises(ValueError, match=r"image 0: expected an H×W×3 uint8 RGB array"):
        det.detect([np.zeros((10, 10), np.uint8)])
    with pytest.raises(StageError, match=r"unknown option.*confidance"):
        load_detector("retinaface", confidance=0.5)
    with pytest.raises(StageError, match="unknown face detector 'mtcnn'"):
        load_detector("mtcnn")
    with pytest.raises(StageError, match="variant resnet50_ternaus has backbone resnet50"):
        load_detector("retinaface", variant="resnet50_ternaus", backbone="mobilenet0.25")
    with pytest.raises(StageError, match=r"not a RetinaFace resnet50 checkpoint \(missing"):
        load_detector("retinaface", variant="resnet50", weights=random_mobilenet)


def test_legacy_zip_with_lightning_prefix_loads(random_mobilenet, tmp_path):
    """ternaus' release layout: a zip holding one checkpoint, keys maybe under ``model.``."""
    import zipfile

    state = torch.load(random_mobilenet, weights_only=True)
    torch.save({f"model.{k}": v for k, v in state.items()}, tmp_path / "inner.pth")
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as archive:
        archive.write(tmp_path / "inner.pth", "inner.pth")
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    options = dict(variant="mobilenet0.25", confidence=0.3, max_size=0, device="cpu")
    zipped = load_detector("retinaface", weights=tmp_path / "release.zip", **options)
    plain = load_detector("retinaface", weights=random_mobilenet, **options)
    np.testing.assert_allclose(zipped.detect([image])[0].boxes, plain.detect([image])[0].boxes)


def test_registry_weights_missing_offline_is_one_line(tmp_path):
    with pytest.raises(StageError) as err:
        load_detector("retinaface", variant="resnet50", weights_dir=tmp_path, download=False)
    message = str(err.value)
    assert "detection_Resnet50_Final.pth" in message and "https://github.com/" in message
    assert str(tmp_path) in message and "\n" not in message


def test_real_mobilenet_one_face_decision_on_shared_faces(shared_weights, capsys):
    """Face-Detector-1MB weights, long side 640, confidence 0.9, NMS 0.4 and containment
    suppression 0.6: the "exactly one face" decision is right on 45 of the 46 labelled
    images (43 without the suppression: nested second boxes)."""
    images, truth = shared_photos(640)  # the long side the detector resizes to anyway
    names = pd.read_csv(needs_shared("data", "faces", "labels.csv"))["file"]
    det = load_detector(
        "retinaface", variant="mobilenet0.25_1mb", weights=shared_weights, confidence=0.9,
        nms=0.4, max_size=640, device="cpu", batch_size=1,
    )  # fmt: skip
    counts = [len(f) for f in det.detect(images)]
    right, _ = one_face_accuracy(truth, counts)
    table = confusion(truth, counts)
    with capsys.disabled():
        print(f"\nRetinaFace MobileNet-0.25 (1MB), {len(truth)} images of ../shared/data/faces")
        print(table.to_string())
        print(f"exactly-one-face decision right on {right}/{len(truth)} ({right / len(truth):.0%})")
        for name, t, c in zip(names, truth, counts, strict=True):
            if (t == 1) != (c == 1):
                print(f"  wrong: {name}: {t} faces, detected {c}")
    assert right >= 45


def test_max_size_is_a_cap_a_smaller_image_runs_at_its_own_size(shared_weights):
    """The faces stage's 256 px version of a portrait: with the variant's max_size (640) it
    runs as it is, as with no resizing at all, instead of being enlarged to 640."""
    photo = to_rgb(open_image(needs_shared("data", "faces", "deepface__img46.jpg")))
    small = np.asarray(photo.resize((256, 256), Image.Resampling.LANCZOS))
    options = dict(variant="mobilenet0.25_1mb", weights=shared_weights, device="cpu")
    capped = load_detector("retinaface", **options)
    assert capped.max_size == 640
    as_is = load_detector("retinaface", max_size=0, **options).detect([small])[0]
    found = capped.detect([small])[0]
    assert len(found) == len(as_is) == 1
    np.testing.assert_allclose(found.boxes, as_is.boxes, atol=1e-3)


def test_thresholds_default_to_the_variants_own(shared_weights):
    det = load_detector(
        "retinaface", variant="mobilenet0.25_1mb", weights=shared_weights, device="cpu"
    )
    assert (det.confidence, det.nms, det.max_size) == (0.9, 0.4, 640)
    assert det.config["containment"] == 0.6
    seeds = VARIANTS["resnet50_ternaus"]
    assert (seeds.confidence, seeds.nms, seeds.max_size) == (0.08, 0.01, 840)
    mine = load_detector(
        "retinaface", variant="mobilenet0.25_1mb", weights=shared_weights, device="cpu",
        confidence=0.5, nms=0.3, max_size=320, containment=None,
    )  # fmt: skip
    assert (mine.confidence, mine.nms, mine.max_size, mine.containment) == (0.5, 0.3, 320, None)


def test_suppress_contained_drops_boxes_inside_a_better_one():
    boxes = np.array(
        [
            [0, 0, 100, 100],  # the face
            [20, 30, 70, 90],  # nested in it, IoU 0.3: NMS at 0.4 keeps it
            [150, 0, 250, 100],  # another face
            [90, 0, 170, 100],  # overlaps both by a quarter of its area
        ],
        np.float32,
    )
    faces = Faces(boxes, np.array([0.99, 0.97, 0.95, 0.93], np.float32), np.zeros((4, 5, 2)))
    kept = suppress_contained(faces, 0.6)
    np.testing.assert_array_equal(kept.boxes, boxes[[0, 2, 3]])
    assert kept.landmarks.shape == (3, 5, 2) and (np.diff(kept.scores) <= 0).all()
    assert len(suppress_contained(faces, None)) == 4
    # a larger box scoring lower than the face inside it is dropped as well
    outer = Faces(boxes[[1, 0]], np.array([0.99, 0.5], np.float32))
    np.testing.assert_array_equal(suppress_contained(outer, 0.6).boxes, boxes[[1]])


def test_nested_boxes_are_suppressed_for_every_detector(shared_weights):
    """The rule is the FaceDetector's, not one detector's: RetinaFace and dlib both go
    through it (dlib returns what its own find returns, minus nested boxes)."""
    from pipeline.faces.base import FaceDetector

    for name in DETECTORS:
        assert DETECTORS[name].detect is FaceDetector.detect, name
