"""translate: a tiny StarGAN v2 trained for a step turns real flowers into its two domains."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import StageError
from pipeline.params import TranslateParams
from pipeline.training.checkpoint import load_generator
from pipeline.training.loop import train
from pipeline.translate import is_sequence, list_pictures, translate
from tests.conftest import run_cli, set_args
from tests.stargan_helpers import flower_images, tiny_stargan2, two_domains
from tests.train_helpers import flowers


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A folder holding a 1-step StarGAN v2 run (data/train) on two flower domains."""
    root = tmp_path_factory.mktemp("stargan")
    data = two_domains(root / "data/dataset", per_domain=4)
    train(tiny_stargan2(data, steps=1), root / "data/train", live_dir=None)
    return root


@pytest.fixture(scope="module")
def trained(run):
    return load_generator(run / "data/train/checkpoints/latest.pt")


def frames(folder: Path, count: int = 5, size: int = 48) -> Path:
    """``count`` real flowers as video frames frame_1.png … (larger than the model: resized)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(flower_images("c3", count, size), start=1):
        image.save(folder / f"frame_{number}.png")
    return folder


def mp4_frames(path: Path) -> int:
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)  # metadata
    return sum(1 for _ in reader)


def test_sequence_gets_every_frame_per_domain_and_an_mp4_and_resumes(trained, tmp_path):
    source = frames(tmp_path / "clip")
    assert is_sequence(list_pictures(source, "translate.source"))
    (tmp_path / "apps").mkdir()
    for name in ("570.png", "1091500.png"):  # a dataset's appids: not frames
        flower_images("c3", 1, 32)[0].save(tmp_path / "apps" / name)
    assert not is_sequence(list_pictures(tmp_path / "apps", "translate.source"))
    (tmp_path / "apps/1091500.png").rename(tmp_path / "apps/571.png")
    assert is_sequence(list_pictures(tmp_path / "apps", "translate.source"))
    cfg = TranslateParams(source=str(source), styles=1, device="cpu")
    out = tmp_path / "out"
    summary = translate(trained, cfg, out, torch.device("cpu"))
    assert summary["sequence"] and summary["written"] == 10 and summary["domains"] == ["c1", "c2"]
    for domain in ("c1", "c2"):
        written = sorted(p.name for p in (out / domain / "style-0").iterdir())
        assert written == [f"frame_{n}.png" for n in range(1, 6)]
        assert Image.open(out / domain / "style-0/frame_1.png").size == (32, 32)
        assert mp4_frames(out / domain / "style-0.mp4") == 5
    # the two domains' translations differ
    a, b = (np.asarray(Image.open(out / d / "style-0/frame_3.png")) for d in ("c1", "c2"))
    assert not np.array_equal(a, b)

    kept = out / "c1/style-0/frame_1.png"
    stamp = kept.stat().st_mtime_ns
    (out / "c1/style-0/frame_2.png").unlink()
    (out / "c2/style-0/frame_5.png").unlink()
    again = translate(trained, cfg, out, torch.device("cpu"))
    assert (again["written"], again["already_there"], again["resumed"]) == (2, 8, True)
    assert kept.stat().st_mtime_ns == stamp and mp4_frames(out / "c2/style-0.mp4") == 5
    # other settings are another translation: the folder starts over
    other = translate(trained, cfg.model_copy(update={"seed": 1}), out, torch.device("cpu"))
    assert (other["written"], other["resumed"]) == (10, False)


def test_moving_style_changes_across_frames_a_fixed_one_does_not(trained):
    from pipeline.translate import latent_styles

    fixed, moving = (
        latent_styles(trained.net, [0], TranslateParams(styles=1, style_motion=m), 5, "cpu")[0]
        for m in (0.0, 0.5)
    )
    codes = fixed.codes(5)
    assert torch.equal(codes[0], codes[4])
    codes = moving.codes(5)
    assert not torch.allclose(codes[0], codes[1]) and not torch.allclose(codes[1], codes[2])


def test_reference_guided_output_follows_the_reference(trained, tmp_path):
    references = tmp_path / "refs"
    (references / "c2").mkdir(parents=True)
    first, second = flower_images("c1", 2, 32, offset=10)
    first.save(references / "c1-first.png")
    second.save(references / "c1-second.png")
    flower_images("c2", 1, 32, offset=10)[0].save(references / "c2/one.png")
    source = tmp_path / "pictures"
    source.mkdir()
    for number, image in enumerate(flower_images("c4", 2, 40)):
        image.save(source / f"tulip{number}a.jpg")  # not a sequence (names differ after the digit)
    cfg = TranslateParams(source=str(source), reference=str(references), domains=["c1"])
    summary = translate(trained, cfg, tmp_path / "out", torch.device("cpu"))
    assert not summary["sequence"] and summary["guide"] == "reference"
    assert summary["styles"] == ["ref-c1-first", "ref-c1-second"] and summary["written"] == 4
    out = tmp_path / "out/c1"
    a = np.asarray(Image.open(out / "ref-c1-first/tulip0a.png"))
    b = np.asarray(Image.open(out / "ref-c1-second/tulip0a.png"))
    assert not np.array_equal(a, b)
    assert not (tmp_path / "out/c2").exists()
    both = translate(trained, cfg.model_copy(update={"domains": [1]}), tmp_path / "o2", "cpu")
    assert both["styles"] == ["ref-c2-one"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"domains": ["Anime"]}, "unknown domain 'Anime'; the checkpoint's domains are 0: c1"),
        ({"domains": [2]}, "unknown domain 2"),
        ({"source": "small"}, "is 16x16, smaller than the model's 32x32"),
        ({"source": "junk"}, "junk/bad.png: cannot be read"),
        ({"source": "nowhere"}, "translate.source: .*nowhere not found"),
        (
            {"source": "fifo"},
            "translate.source: .*fifo is a FIFO, not a folder of images or a dataset zip (only "
            "folders and files are read); point it at one",
        ),
        ({"reference": "small"}, "small.png: no domain; name it <domain>-"),
    ],
)
def test_bad_input_stops_with_one_line(trained, tmp_path, change, message):
    (tmp_path / "small").mkdir()
    flower_images("c1", 1, 16)[0].save(tmp_path / "small/small.png")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/bad.png").write_bytes(b"not a png")
    os.mkfifo(tmp_path / "fifo")
    frames(tmp_path / "clip", 2)
    settings = {"source": str(tmp_path / "clip"), **change}
    for key in ("source", "reference"):
        if key in change:
            settings[key] = str(tmp_path / change[key])
    with pytest.raises(StageError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        translate(trained, TranslateParams(**settings), tmp_path / "out", torch.device("cpu"))
    assert "\n" not in str(err.value)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_members_cannot_write_outside_the_output_folder(trained, tmp_path):
    """Zip slip: members named ``../../x.png`` or ``/abs/y.png`` are refused with why; only
    the safe member is translated, and nothing is written outside the output folder."""
    first, second, third, fourth = flower_images("c3", 4, 40)
    source = tmp_path / "pictures.zip"
    absolute = tmp_path / "abs/y.png"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("../../../../outside/x.png", png_bytes(first))
        archive.writestr(str(absolute), png_bytes(second))
        archive.writestr("sub/../../../z.png", png_bytes(third))
        archive.writestr("sub/ok.png", png_bytes(fourth))
    out = tmp_path / "project/data/translate"
    cfg = TranslateParams(source=str(source), styles=1)
    summary = translate(trained, cfg, out, torch.device("cpu"))
    assert summary["written"] == 2 and summary["images"] == 1
    assert summary["refused"] == {
        f"{source}:../../../../outside/x.png": "climbs out of its folder (..)",
        f"{source}:{absolute}": "an absolute path",
        f"{source}:sub/../../../z.png": "climbs out of its folder (..)",
    }
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == [
        "project/data/translate/c1/style-0/sub/ok.png",
        "project/data/translate/c2/style-0/sub/ok.png",
    ]
    assert json.loads((out / "translate.json").read_text())["refused"] == summary["refused"]
    only_bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(only_bad, "w") as archive:
        archive.writestr("../x.png", png_bytes(first))
    cfg = TranslateParams(source=str(only_bad))
    with pytest.raises(StageError, match=r"none of its 1 image\(s\) has a safe name \(e.g. "):
        translate(trained, cfg, out, torch.device("cpu"))


@pytest.mark.parametrize(
    ("classes", "folders"),
    [
        (["アニメ", "ホラー"], ["アニメ", "ホラー"]),
        (["a b", "a|b"], ["a_b", "a_b-"]),  # the second: a short digest of its name
    ],
)
def test_every_output_has_its_own_readable_name(trained, tmp_path, classes, folders):
    """Domains whose names read alike and pictures that share a stem (x.png, x.jpg) each get
    their own file; the summary counts the files on disk."""
    named = dataclasses.replace(trained, classes=classes)
    source = tmp_path / "pictures"
    source.mkdir()
    images = flower_images("c3", 4, 40)
    for image, name in zip(images, ["x.png", "x.jpg", "a b.png", "a|b.png"], strict=True):
        image.save(source / name, quality=95)
    out = tmp_path / "out"
    summary = translate(named, TranslateParams(source=str(source), styles=1), out, "cpu")
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert summary["written"] == len(on_disk) == 4 * 2
    made = sorted(summary["folders"].values())
    assert made[0] == folders[0] and made[1].startswith(folders[1]) and made[0] != made[1]
    for folder in made:
        names = sorted(p.name for p in (out / folder / "style-0").iterdir())
        assert names == ["a b.png", "a|b.png", "x.png", "x_png.png"]  # x.jpg sorts first
        x, x_png = (np.asarray(Image.open(out / folder / "style-0" / n)) for n in names[2:])
        assert not np.array_equal(x, x_png)  # two translations, neither overwritten
    again = translate(named, TranslateParams(source=str(source), styles=1), out, "cpu")
    assert (again["written"], again["already_there"]) == (0, 8)


def test_stage_translates_the_dataset_and_skips_other_models(run, tmp_path, monkeypatch):
    monkeypatch.chdir(run)
    (run / "params.yaml").write_text("{}\n")
    result = run_cli("translate", *set_args(["translate.max_images=3", "translate.styles=2"]))
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "data/translate/translate.json").read_text())
    assert summary["images"] == 3 and summary["written"] == 3 * 2 * 2 and summary["complete"]
    assert "12 written, 0 already there" in result.output

    other = tmp_path / "other"
    train(tiny_stargan2(flowers(tmp_path / "plain", 8), model="lightweight", steps=1), other,
          live_dir=None)  # fmt: skip
    checkpoint = f"translate.checkpoint={other / 'checkpoints/latest.pt'}"
    result = run_cli("translate", *set_args([checkpoint]))
    assert result.exit_code == 0 and "lightweight does not translate images" in result.output


def test_translation_metrics_fid_per_domain_and_null_lpips_with_reason(tmp_path):
    from pipeline.metrics.inception import load_inception
    from pipeline.metrics.translation import translation_metrics

    data = two_domains(tmp_path / "data", per_domain=3, held_out=2)
    trained = train(tiny_stargan2(data, steps=1), tmp_path / "train", live_dir=None)
    inception = load_inception("auto", "cpu")
    generator = load_generator(tmp_path / "train/checkpoints/latest.pt")
    assert trained.state.step == 1

    # through evaluate's registry (evaluate.metrics: [translation]), as the stage runs it
    from pipeline.metrics.registry import MetricContext, get_metric, run_metric
    from pipeline.params import EvaluateParams

    cfg = EvaluateParams(metrics=["translation"])
    ctx = MetricContext(cfg, generator, torch.device("cpu"), None, inception, data=str(data),
                        lpips_note="vgg.pth missing")  # fmt: skip
    metrics = run_metric(get_metric("translation"), ctx)
    for guide in ("latent", "reference"):
        fids = metrics[f"fid_{guide}"]
        assert set(fids) == {"c1", "c2"} and all(v > 0 for v in fids.values())
        assert metrics[f"fid_mean_{guide}"] == pytest.approx(sum(fids.values()) / 2)
        assert metrics[f"lpips_{guide}"] is None  # no LPIPS network: null, with the reason
        assert ctx.notes[f"lpips_{guide}"] == "vgg.pth missing"
    assert metrics["fid_latent"] != metrics["fid_reference"]
    plain = train(tiny_stargan2(flowers(tmp_path / "plain", 8), model="lightweight", steps=1),
                  tmp_path / "lw", live_dir=None)  # fmt: skip
    assert plain.state.step == 1
    other = MetricContext(cfg, load_generator(tmp_path / "lw/checkpoints/latest.pt"),
                          torch.device("cpu"), None, inception, data=str(data))  # fmt: skip
    assert all(v is None for v in run_metric(get_metric("translation"), other).values())
    assert "StarGAN v2's; this is lightweight" in other.notes["fid_latent"]

    (data / "test.zip").unlink()
    metrics, notes = translation_metrics(generator, data, inception)
    assert all(v is None for v in metrics.values()) and "test.zip not found" in notes["fid_latent"]


def test_render_draws_translation_grids_and_says_what_it_cannot(run, monkeypatch):
    monkeypatch.chdir(run)
    (run / "params.yaml").write_text("{}\n")
    result = run_cli("render", *set_args(["render.grid=[2, 3]", "render.device=cpu"]))
    assert result.exit_code == 0, result.output
    assert "stargan2 translates real images" in result.output
    images = run / "data/render/images"
    # a row per source: the source, then two seeded styles in each of the two domains
    assert Image.open(images / "translation.png").size == ((1 + 2 * 2) * 32, 2 * 32)
    # a blank and a reference per domain on top, then a row per source
    reference = Image.open(images / "translation-reference.png")
    assert reference.size == (3 * 32, 3 * 32)
    summary = json.loads((run / "data/render/render.json").read_text())
    assert list(summary["rendered"]) == ["reals", "translation", "translation_reference"]
    assert "fakes" in summary["unsupported"] and "reals" not in summary["unsupported"]
    assert summary["rendered"]["translation"]["domains"] == ["c1", "c2"]
