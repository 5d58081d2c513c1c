import pytest
import torch

from pipeline.augment import BatchPart, diff_augment
from pipeline.training.params import AugParams

ALL = ["translation", "color", "cutout", "offset"]


def images(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_probability_zero_is_identity():
    x = images()
    out = diff_augment(x, ALL, 0.0, torch.Generator().manual_seed(1))
    assert out is x


def test_probability_one_changes_every_image():
    x = images()
    out = diff_augment(x, ["color", "translation"], 1.0, torch.Generator().manual_seed(1))
    changed = (out - x).flatten(1).abs().amax(1) > 1e-4
    assert changed.all()


def test_probability_half_changes_some():
    x = images(64)
    out = diff_augment(x, ["color"], 0.5, torch.Generator().manual_seed(3))
    changed = int(((out - x).flatten(1).abs().amax(1) > 1e-4).sum())
    assert 16 < changed < 48


@pytest.mark.parametrize("kind", ALL)
def test_gradients_flow_through_every_type(kind):
    x = images().requires_grad_(True)
    out = diff_augment(x, [kind], 1.0, torch.Generator().manual_seed(2))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_moves_pixels_and_fills_zero():
    x = torch.ones(32, 1, 8, 8)
    out = diff_augment(x, ["translation"], 1.0, torch.Generator().manual_seed(0))
    # shifts of up to 1 px (ratio 1/8): rows/cols that moved in are 0, the rest 1
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out == 0).any() and (out.sum((1, 2, 3)) >= 49).all()


def test_offset_wraps_around_and_keeps_pixels():
    x = images(4)
    out = diff_augment(x, ["offset"], 1.0, torch.Generator().manual_seed(5))
    for a, b in zip(x, out, strict=True):
        assert torch.allclose(a.flatten().sort().values, b.flatten().sort().values)


def test_cutout_zeroes_a_half_size_square():
    x = torch.ones(16, 1, 16, 16)
    out = diff_augment(x, ["cutout"], 1.0, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum((1, 2, 3))
    assert (zeros > 0).all() and (zeros <= 64).all()


def test_slices_of_a_global_batch_equal_the_whole():
    x = images(6)
    whole = diff_augment(x, ALL, 0.7, torch.Generator().manual_seed(9))
    parts = [
        diff_augment(x[i : i + 3], ALL, 0.7, torch.Generator().manual_seed(9), BatchPart(6, i))
        for i in (0, 3)
    ]
    assert torch.equal(whole, torch.cat(parts))


def test_seed_schedule_is_expressible():
    aug = AugParams()  # defaults are the seed's schedule
    assert aug.types_at(0) == ["translation"]
    assert aug.types_at(27_000) == ["translation", "color"]
    assert aug.types_at(60_000) == ["translation", "color", "cutout"]
