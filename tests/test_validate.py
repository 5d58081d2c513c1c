import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from pipeline.params import ValidateParams
from pipeline.validate import (
    ValidateTask,
    content_bbox,
    find_near_duplicates,
    inspect_image,
    phash_int,
    split_verdicts,
)
from tests.conftest import run_cli
from tests.images import capsule, png_bomb, save


def inspect(path, tmp_path, expected=(184, 69), **params):
    task = ValidateTask(1, str(path), expected, ValidateParams(**params), str(tmp_path / "conv"))
    return inspect_image(task)


@pytest.fixture
def real(capsules, tmp_path):
    return save(capsule(3), tmp_path / "real.jpg", quality=92)


def test_real_capsule_passes_with_hash(real, tmp_path):
    verdict = inspect(real, tmp_path)
    assert verdict.reason is None
    assert (verdict.width, verdict.height, verdict.mode) == (184, 69, "RGB")
    assert 0 <= verdict.phash < 2**64 and verdict.path == str(real)


def test_truncated_jpeg(real, tmp_path):
    data = real.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    verdict = inspect(tmp_path / "cut.jpg", tmp_path)
    assert verdict.reason == "truncated"


@pytest.mark.parametrize("content", [b"", b"<html>Oops</html>", b"\xff\xd8\xff\xe0garbage"])
def test_unreadable(tmp_path, content):
    (tmp_path / "bad.jpg").write_bytes(content)
    assert inspect(tmp_path / "bad.jpg", tmp_path).reason in ("unreadable", "truncated")


def test_missing_file_is_unreadable(tmp_path):
    verdict = inspect(tmp_path / "gone.jpg", tmp_path)
    assert (verdict.reason, verdict.detail) == ("unreadable", "file not found")


def test_decompression_bomb_refused_from_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")  # 1.6 gigapixels claimed, 100 bytes on disk
    assert bomb.stat().st_size < 200
    verdict = inspect(bomb, tmp_path, expected=None)
    assert verdict.reason == "too_large"


def test_param_max_pixels(real, tmp_path):
    assert inspect(real, tmp_path, max_pixels=1000).reason == "too_large"


def test_wrong_size_unless_any_size(real, tmp_path):
    verdict = inspect(real, tmp_path, expected=(300, 450))
    assert (verdict.reason, verdict.detail) == ("wrong_size", "184x69, want 300x450")
    assert inspect(real, tmp_path, expected=None).reason is None


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "LA"])
def test_non_rgb_rejected_or_converted(capsules, tmp_path, mode):
    im = capsule(3).convert(mode)
    path = save(im, tmp_path / f"img.{'jpg' if mode in ('L', 'CMYK') else 'png'}")
    rejected = inspect(path, tmp_path)
    assert (rejected.reason, rejected.mode) == ("mode", mode)
    converted = inspect(path, tmp_path, convert_mode=True, vignette=False)
    assert converted.reason is None and converted.converted
    out = Image.open(converted.path)
    assert out.mode == "RGB" and out.size == (184, 69) and converted.path.endswith("conv/1.png")


def test_transparency_flattened_on_matte(tmp_path):
    im = Image.new("RGBA", (184, 69), (0, 0, 0, 0))
    im.paste((255, 255, 255, 255), (40, 20, 120, 50))
    verdict = inspect(
        save(im, tmp_path / "logo.png"),
        tmp_path,
        convert_mode=True,
        matte=(10, 20, 30),
        vignette=False,
    )
    out = Image.open(verdict.path)
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.getpixel((60, 30)) == (255, 255, 255)


def test_blank(tmp_path):
    flat = save(Image.new("RGB", (184, 69), (40, 90, 160)), tmp_path / "flat.png")
    verdict = inspect(flat, tmp_path)
    assert (verdict.reason, verdict.detail) == ("blank", "channel std 0.00")


def test_vignette(capsules, tmp_path):
    framed = Image.new("RGB", (184, 69), (0, 0, 0))
    framed.paste(capsule(4).resize((144, 49)), (20, 10))
    path = save(framed, tmp_path / "framed.jpg", quality=90)
    verdict = inspect(path, tmp_path)
    assert verdict.reason == "vignette"
    left, top, right, bottom = content_bbox(Image.open(path).convert("RGB"), 16)
    assert abs(left - 20) <= 2 and abs(top - 10) <= 2 and abs(right - 164) <= 2
    assert abs(bottom - 59) <= 2
    assert inspect(path, tmp_path, vignette=False).reason is None


def test_near_duplicates_keep_lowest_appid_and_compare_with_kept_only():
    a, b, c = 0, 0b111, 0b111111  # b is 3 bits from a and c; c is 6 from a
    dups = find_near_duplicates([30, 20, 10], [c, b, a], max_distance=4)
    assert dups == {20: (10, 3)}  # 30 is 3 bits from 20, but 20 is not kept


def test_real_near_duplicate_found_and_distinct_images_kept(capsules):
    original = capsule(1)
    brighter = ImageEnhance.Brightness(original).enhance(1.03)
    hashes = [phash_int(original), phash_int(brighter), phash_int(capsule(2))]
    dups = find_near_duplicates([5, 3, 9], hashes, max_distance=10)
    assert dups == {5: (3, dups[5][1])} and dups[5][1] <= 10


def test_split_applies_dedup_only_among_passing(real, tmp_path):
    good = inspect(real, tmp_path)
    twin = inspect(real, tmp_path)
    twin.appid = 0  # a lower appid with the same image: it wins
    broken = inspect(tmp_path / "gone.jpg", tmp_path)
    broken.appid = 7
    accepted, rejected = split_verdicts([good, twin, broken], max_distance=10)
    assert accepted["appid"].tolist() == [0]
    assert dict(zip(rejected["appid"], rejected["reason"], strict=True)) == {
        1: "near_duplicate",
        7: "unreadable",
    }
    accepted, _ = split_verdicts([good, twin], max_distance=None)
    assert len(accepted) == 2


def test_stage_tables_and_summary(capsules, params_file):
    rows = []
    for appid in range(10, 16):
        path = save(capsule(appid), params_file.parent / f"data/download/images/{appid}.jpg")
        rows.append({"appid": appid, "kind": "capsule_184x69", "status": "ok", "path": str(path)})
    save(Image.new("RGB", (184, 69)), params_file.parent / "data/download/images/99.jpg")
    rows.append(
        {
            "appid": 99,
            "kind": "capsule_184x69",
            "status": "ok",
            "path": "data/download/images/99.jpg",
        }
    )
    rows.append({"appid": 100, "kind": "capsule_184x69", "status": "missing", "path": None})
    pd.DataFrame(rows).to_parquet("data/download/manifest.parquet")
    result = run_cli("validate", "-S", "validate.workers=2", "-S", "validate.vignette=false")
    assert result.exit_code == 0, result.output
    accepted = pd.read_parquet("data/validate/accepted.parquet")
    rejected = pd.read_parquet("data/validate/rejected.parquet")
    assert accepted["appid"].tolist() == list(range(10, 16))
    assert rejected[["appid", "reason"]].values.tolist() == [[99, "blank"]]
    summary = json.loads(Path("data/validate/summary.json").read_text())
    assert summary["input"] == 7 and summary["accepted"] == 6
    assert summary["reasons"]["blank"] == 1
