"""StarGAN v2: networks, losses, the engine's resume, sampling from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.augment import BatchPart
from pipeline.errors import StageError
from pipeline.models import build_model
from pipeline.models.base import Batch, StepContext
from pipeline.models.stargan2 import random_resized_crop, same_domain_rows
from pipeline.training.checkpoint import load_checkpoint, load_generator
from pipeline.training.loop import Trainer, train
from pipeline.training.params import TrainParams
from tests.stargan_helpers import (
    TINY_STARGAN2,
    flower_images,
    tiny_stargan2,
    two_domains,
)
from tests.train_helpers import flowers


def tiny_model(size: int = 32, domains: int = 2, **changes):
    torch.manual_seed(0)
    params = TrainParams(model="stargan2", image_size=size, stargan2={**TINY_STARGAN2, **changes})
    return build_model(params, num_classes=domains)


def context(step: int = 0, kimg: float = 0.0, rows: int = 4, seed: int = 1) -> StepContext:
    generator = torch.Generator().manual_seed(seed)
    return StepContext(generator, BatchPart(rows, 0), rows, lambda x: x, step=step, kimg=kimg)


@pytest.fixture(scope="module")
def real_batch() -> Batch:
    """Four real flowers, two of each domain, in [-1, 1]."""
    images = [im for domain in ("c1", "c2") for im in flower_images(domain, 2, 32)]
    array = torch.stack([torch.from_numpy(np.array(im)) for im in images])
    return Batch(array.permute(0, 3, 1, 2).float() / 127.5 - 1, torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize(("size", "hpf", "blocks"), [(32, 0, 1), (64, 0, 2), (64, 1, 3)])
def test_blocks_scale_with_size(size, hpf, blocks):
    model = tiny_model(size, hpf=hpf)
    assert len(model.G.encode) == len(model.G.decode) == blocks + 2  # + two bottleneck blocks
    x = torch.rand(3, 3, size, size) * 2 - 1
    domains = torch.tensor([0, 1, 1])
    style = model.mapping(torch.randn(3, 16), domains)
    assert style.shape == (3, 16) and model.style_encoder(x, domains).shape == (3, 16)
    assert model.G(x, style).shape == x.shape and model.D(x, domains).shape == (3,)
    with pytest.raises(ValueError, match=r"not G\(z\): sample it with"):
        model.G(torch.randn(3, 16))  # a z → G(z) sampler gets one line, not a TypeError


def test_style_codes_differ_per_domain():
    model = tiny_model(domains=3)
    z, x = torch.randn(2, 16), torch.rand(2, 3, 32, 32)
    styles = [model.mapping(z, torch.full((2,), k)) for k in range(3)]
    encoded = [model.style_encoder(x, torch.full((2,), k)) for k in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(styles[a], styles[b])
            assert not torch.allclose(encoded[a], encoded[b])


def test_unlabelled_data_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="needs a labelled dataset") as err:
        tiny_model(domains=0)
    assert "\n" not in str(err.value)
    with pytest.raises(StageError, match="needs a labelled dataset"):
        Trainer(tiny_stargan2(flowers(tmp_path / "plain", 8)), tmp_path / "out", live_dir=None)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def grads_of(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def reached(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads_of(module))


@pytest.mark.parametrize("step", [0, 1], ids=["latent", "reference"])
def test_losses_are_finite_and_reach_their_networks(real_batch, step):
    model = tiny_model()
    ctx = context(step)
    outcome = model.d_loss(real_batch, ctx)
    outcome.loss.backward()
    assert torch.isfinite(outcome.loss) and outcome.real_logits.shape == (4,)
    assert reached(model.D) and not reached(model.G) and not reached(model.mapping)
    assert ctx.logs["loss/r1_penalty"] > 0
    model.zero_grad(set_to_none=True)
    model.D.requires_grad_(False)  # as the engine freezes D for G's step
    ctx = context(step)
    loss = model.g_loss(real_batch, ctx)
    loss.backward()
    assert torch.isfinite(loss)
    for key in ("loss/G", "loss/style", "loss/diversity", "loss/cycle"):
        assert torch.isfinite(ctx.logs[key]) and ctx.logs[key] > 0
    assert reached(model.G) and reached(model.style_encoder) and not reached(model.D)
    # latent-guided steps train the mapping network; reference-guided ones do not use it
    assert reached(model.mapping) == (step == 0)


def test_diversity_weight_decays_on_schedule(real_batch):
    model = tiny_model(lambda_ds=2.0, ds_decay_kimg=100)
    assert [model.lambda_ds(k) for k in (0, 25, 100, 150)] == [2.0, 1.5, 0.0, 0.0]
    ctx = context(kimg=50.0)
    model.g_loss(real_batch, ctx)
    assert ctx.logs["lambda_ds"] == 1.0
    assert tiny_model(ds_decay_kimg=None).lambda_ds(1e6) == 1.0


def test_random_crop_draws_the_same_whatever_the_outcome(real_batch):
    images = real_batch.images
    kept, after_kept = context(), context()
    assert torch.equal(random_resized_crop(images, kept, 0.0), images)
    random_resized_crop(images, after_kept, 1.0)
    assert torch.equal(kept.generator.get_state(), after_kept.generator.get_state())
    cropped = random_resized_crop(images, context(), 1.0)
    assert cropped.shape == images.shape
    assert all(not torch.equal(a, b) for a, b in zip(cropped, images, strict=True))
    assert torch.equal(cropped, random_resized_crop(images, context(), 1.0))  # seeded


def test_second_references_come_from_the_same_domain():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    first = torch.tensor([5, 4, 3, 2, 1, 0])
    for seed in range(5):
        draws = torch.rand(6, 6, generator=torch.Generator().manual_seed(seed))
        second = same_domain_rows(labels, first, draws)
        assert torch.equal(labels[second], labels[first])
        # another image of the domain where there is one; the lone domain-2 row repeats
        assert torch.equal(second == first, labels[first] == 2)


def test_sample_translates_kept_sources(real_batch):
    model = tiny_model()
    model.d_loss(real_batch, context())
    assert int(model.G.sources_filled) == 1
    assert torch.equal(model.G.sample_sources, real_batch.images)  # 4 kept, 4 rows
    z = torch.randn(6, 16)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        whole = model.sample(z, labels)
        parts = torch.cat([model.sample(z[:2], labels[:2]), model.sample(z[2:], labels[2:])])
        other_domain = model.sample(z, 1 - labels)
    assert torch.allclose(whole, parts, atol=1e-5) and whole.abs().max() <= 1
    assert not torch.allclose(whole, other_domain)
    model.d_loss(Batch(real_batch.images.flip(0), real_batch.labels), context())
    assert torch.equal(model.G.sample_sources, real_batch.images)  # the first batch stays


def test_resume_is_bit_identical_and_the_checkpoint_samples(tmp_path):
    data = two_domains(tmp_path / "data", per_domain=4)
    params = tiny_stargan2(data, steps=4, snapshot_every=2)
    straight = train(params, tmp_path / "a", live_dir=None)
    train(params, tmp_path / "b", live_dir=None, stop_at=3)  # after a reference-guided step
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert resumed.resumed and resumed.state.step == 4
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    for name, ema in straight.ema.items():
        assert states_equal(ema.state_dict(), resumed.ema[name].state_dict())
    for name in ("G", "mapping", "style", "D"):
        a, b = straight.optimizers[name].state_dict(), resumed.optimizers[name].state_dict()
        assert torch.equal(a["state"][0]["exp_avg"], b["state"][0]["exp_avg"])
    assert straight.optimizers["mapping"].param_groups[0]["lr"] == 1e-6

    path = tmp_path / "a/checkpoints/latest.pt"
    checkpoint = load_checkpoint(path)
    assert set(checkpoint["ema"]) == {"mapping", "style_encoder"}
    assert checkpoint["classes"] == ["c1", "c2"]
    trained = load_generator(path)
    assert trained.num_classes == 2 and int(trained.G.sources_filled) == 1
    z = torch.randn(2, 16)
    with torch.no_grad():
        images = trained.sample(z, torch.tensor([0, 1]))
        expected = straight.sampler.sample(z, torch.tensor([0, 1])).clamp(-1, 1)
    assert torch.allclose(images, expected)
    snapshots = sorted((tmp_path / "a/snapshots").glob("step-*.pt"))
    assert len(snapshots) == 2  # each with the averaged mapping network and style encoder
    snapshot = load_checkpoint(snapshots[-1])  # step 4: the final checkpoint's averages
    assert "D" not in snapshot and set(snapshot["ema"]) == {"mapping", "style_encoder"}
    assert states_equal(snapshot["ema"]["style_encoder"], checkpoint["ema"]["style_encoder"])


def test_lpips_diversity_is_zero_for_one_style_and_positive_for_several(real_batch):
    from pipeline.lpips import LPIPS
    from pipeline.metrics.translation import lpips_diversity

    lpips = LPIPS()  # random weights (the real ones are not available offline), made positive
    for lin in lpips.lins:
        lin.weight.data.abs_()
    images = real_batch.images[:4].reshape(2, 2, 3, 32, 32)  # 2 sources x 2 "styles"
    same = images[:, :1].expand(-1, 2, -1, -1, -1).reshape(4, 3, 32, 32)
    assert lpips_diversity(lpips, same, 2) == 0
    assert lpips_diversity(lpips, images.reshape(4, 3, 32, 32), 2) > 0
