"""StyleGAN2 and ADA on the training engine, at 32 px on real flowers."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import BatchPart, ada_augment, grid_sample
from pipeline.models.base import Batch, StepContext, has_mapping, set_noise_mode
from pipeline.models.stylegan2 import (
    ModulatedConv2d,
    StyleGAN2,
    resolve_config,
)
from pipeline.training.checkpoint import load_checkpoint, load_generator
from pipeline.training.loop import Trainer, train
from pipeline.training.params import StyleGAN2Params
from tests.train_helpers import TINY_STYLEGAN2, flowers, tiny_stylegan2


@pytest.fixture
def data(tmp_path):
    return flowers(tmp_path / "flowers", 16, 32)


def tiny_model(size: int = 32, **changes) -> StyleGAN2:
    torch.manual_seed(0)
    return StyleGAN2(size, StyleGAN2Params(**{**TINY_STYLEGAN2, **changes}), batch_size=8)


def context(rows: int, seed: int = 0, augment=lambda x: x) -> StepContext:
    generator = torch.Generator().manual_seed(seed)
    return StepContext(generator, BatchPart(rows, 0), rows, augment)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("size", [8, 32, 64])
def test_generator_and_discriminator_shapes(size):
    model = tiny_model(size)
    G = model.G
    assert has_mapping(G) and G.num_ws == 2 * int(math.log2(size)) - 2
    images = G(torch.randn(3, 32))
    assert images.shape == (3, 3, size, size) and torch.isfinite(images).all()
    assert model.D(images).shape == (3, 1)
    assert [w.shape[1] for w in G.modulation_weights()] == [32] * G.num_ws


def test_demodulation_keeps_unit_variance():
    torch.manual_seed(0)
    conv = ModulatedConv2d(256, 256, w_dim=64, kernel_size=3)
    x = torch.randn(8, 256, 16, 16)
    for style_scale in (1.0, 10.0):  # whatever the styles' size
        with torch.no_grad():
            w = torch.randn(8, 64) * style_scale
            out = conv(x, w, fused=False)
            fused = conv(x, w, fused=True)
        assert 0.85 < out[:, :, 1:-1, 1:-1].var().item() < 1.15
        assert torch.allclose(out, fused, atol=1e-4)
    plain = ModulatedConv2d(256, 256, w_dim=64, kernel_size=3, demodulate=False)
    with torch.no_grad():
        loud = plain(x, torch.randn(8, 64) * 10, fused=False)
    assert loud.var().item() > 4  # without demodulation the styles' scale comes through


def test_truncation_pulls_towards_the_average_w():
    G = tiny_model().G.eval()
    G.mapper.w_avg.copy_(torch.randn(32))
    z = torch.randn(4, 32)
    ws = G.mapping(z)
    assert torch.allclose(G.mapping(z, truncation_psi=0), G.w_avg.expand_as(ws))
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(half[:, :2], (ws[:, :2] + G.w_avg) / 2, atol=1e-6)
    assert torch.equal(half[:, 2:], ws[:, 2:])
    set_noise_mode(G, "const")
    with torch.no_grad():
        assert torch.equal(G(z), G(z))  # const noise: deterministic


def test_presets_follow_nvlabs_rules():
    assert resolve_config(StyleGAN2Params(), 256, 64).map_layers == 8  # StyleGAN2's default
    auto = resolve_config(StyleGAN2Params(map_layers=None), 256, 64)
    assert auto.map_layers == 2 and auto.channel_base == 16384
    assert auto.r1_gamma == pytest.approx(0.0002 * 256**2 / 64) and auto.lr == 0.0025
    assert resolve_config(StyleGAN2Params(), 1024, 32).channel_base == 32768
    e = resolve_config(StyleGAN2Params(config="config-e"), 256, 32)
    assert (e.map_layers, e.r1_gamma, e.lr) == (8, 10.0, 0.002)
    assert resolve_config(StyleGAN2Params(config="paper256", r1_gamma=3), 256, 64).r1_gamma == 3


def test_lazy_regularisation_schedule_and_optimizer_correction(data, tmp_path):
    calls = {"d": [], "g": []}

    class Watched(StyleGAN2):
        """The real model, noting the steps at which its regularisers run."""

        def d_reg_loss(self, batch, ctx):
            calls["d"].append(trainer.state.step)
            return super().d_reg_loss(batch, ctx)

        def g_reg_loss(self, batch, ctx):
            calls["g"].append(trainer.state.step)
            return super().g_reg_loss(batch, ctx)

    params = tiny_stylegan2(data, steps=8, stylegan2=dict(r1_interval=4, pl_interval=2))
    trainer = Trainer(
        params,
        tmp_path,
        live_dir=None,
        model_factory=lambda p: Watched(p.image_size, p.stylegan2, p.batch_size),
    )
    trainer.run()
    assert calls == {"d": [0, 4], "g": [0, 2, 4, 6]}
    lr = trainer.model.config.lr
    assert trainer.opt_D.param_groups[0]["lr"] == pytest.approx(lr * 4 / 5)
    assert trainer.opt_D.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (4 / 5))
    assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(lr * 2 / 3)


def test_regularisers_are_finite_nonzero_and_reach_the_weights():
    model = tiny_model(r1_gamma=1.0)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    r1 = model.d_reg_loss(Batch(real), context(4))
    assert torch.isfinite(r1) and r1 > 0
    r1.backward()
    weights = [p for p in model.D.parameters() if p.dim() > 1]  # (a bias has no say in ∇x)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    pl = model.g_reg_loss(Batch(real), context(4))  # first call: distance from a zero running mean
    assert torch.isfinite(pl) and pl > 0 and model.G.pl_mean > 0
    pl.backward()
    mapping = model.G.mapper.layers[0].weight
    assert mapping.grad is not None and mapping.grad.abs().sum() > 0
    off = tiny_model(r1_gamma=0.0, pl_weight=0.0)
    assert off.d_reg_interval is None and off.g_reg_interval is None


def test_ada_p_zero_is_identity_and_p_one_changes_every_image():
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    assert ada_augment(x, 0.0, generator) is x
    for stages in ("b", "g", "c", "bgc"):
        out = ada_augment(x, 1.0, torch.Generator().manual_seed(1), stages=stages)
        assert out.shape == x.shape and torch.isfinite(out).all()
        changed = (out - x).abs().flatten(1).amax(1)
        assert (changed > 1e-3).all(), stages
    # at small p, images that drew no transform are returned untouched
    out = ada_augment(x, 0.02, torch.Generator().manual_seed(2))
    untouched = ((out - x).abs().flatten(1).amax(1) == 0).sum()
    assert untouched >= 4


def test_ada_blit_is_a_rearrangement_of_pixels():
    """x-flips, quarter turns and whole-pixel shifts (reflected at the borders) move pixels
    without blending them: every output value is an input value of the same image."""
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16) / 1536 - 1
    out = ada_augment(x, 1.0, torch.Generator().manual_seed(3), stages="b")
    assert not torch.allclose(out, x)
    for i in range(2):
        nearest = (out[i].flatten()[:, None] - x[i].flatten()[None]).abs().amin(1)
        assert nearest.max() < 1e-4  # a blend of neighbours would be ~1/1536 off


@pytest.mark.parametrize("padding", ["reflection", "zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_matches_torch_and_differentiates_twice(padding, align_corners):
    """ADA's resampling (R1 differentiates through it twice; CUDA's grid_sample cannot):
    the values of F.grid_sample, and first and second derivatives that pass gradcheck."""
    images = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 1.1, 0.05]]] * 2, dtype=torch.float64)
    grid = F.affine_grid(theta, [2, 3, 7, 6], align_corners=True)

    def sample(x):
        return grid_sample(x, grid, padding, align_corners)

    expected = F.grid_sample(images, grid, "bilinear", padding, align_corners)
    assert torch.allclose(sample(images), expected)
    assert torch.autograd.gradcheck(sample, images)
    assert torch.autograd.gradgradcheck(sample, images)


def test_r1_through_ada_differentiates_twice():
    """R1's gradient of the gradient w.r.t. the reals, through every ADA stage at p = 1."""
    model = tiny_model()
    real = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    logits = model.D(ada_augment(real, 1.0, torch.Generator().manual_seed(0)))
    (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    grads.square().sum().backward()
    weight = next(model.D.parameters())
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_gradients_reach_g_through_ada():
    model = tiny_model()
    fake = model.G(torch.randn(4, 32))
    augmented = ada_augment(fake, 1.0, torch.Generator().manual_seed(0))
    model.D(augmented).sum().backward()
    grads = [p.grad for p in model.G.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_ada_p_rises_when_d_overfits_and_falls_otherwise(data, tmp_path):
    params = tiny_stylegan2(data, ada=dict(interval=4, initial_p=0.5, speed_kimg=1))
    trainer = Trainer(params, tmp_path, live_dir=None)
    step = params.batch_size * 4 / 1000  # batch × interval / speed
    trainer.state.step = 4
    ada = trainer.augmenter
    ada.stats.copy_(torch.tensor([30.0, 32.0]))  # r_t ≈ 0.94 > 0.6: overfitting
    logs = ada.adjust(4)
    assert ada.p == pytest.approx(0.5 + step)
    assert logs["augment/r_t"] == pytest.approx(30 / 32)
    for _ in range(20):  # r_t = 0: D unsure of the reals, p falls to 0 and stays there
        ada.stats.copy_(torch.tensor([0.0, 32.0]))
        ada.adjust(4)
    assert ada.p == 0.0
    ada.stats.copy_(torch.tensor([32.0, 32.0]))
    ada.adjust(5)  # not an adjustment step
    assert ada.p == 0.0


def test_ada_fixed_p_never_moves(data, tmp_path):
    params = tiny_stylegan2(data, steps=2, ada=dict(fixed_p=0.4, interval=1))
    trainer = train(params, tmp_path, live_dir=None)
    assert trainer.state.ada_p == 0.4 and trainer.last_logs["augment/prob"] == 0.4


def test_resume_keeps_kimg_p_optimizer_moments_and_pl_mean(data, tmp_path):
    params = tiny_stylegan2(data, steps=6, ada=dict(interval=2, initial_p=0.3, speed_kimg=2))
    straight = train(params, tmp_path / "a", live_dir=None)
    train(params, tmp_path / "b", live_dir=None, stop_at=3)
    halfway = load_checkpoint(tmp_path / "b/checkpoints/latest.pt")
    assert halfway["state"]["nimg"] == 24 and halfway["augment"]["kind"] == "ada"
    assert halfway["state"]["ada_count"] > 0  # signs gathered since the last adjustment
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert resumed.resumed and resumed.state == straight.state
    assert straight.state.ada_p != 0.3  # p moved, and the resumed run moved it the same way
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())
    for a, b in ((straight.opt_G, resumed.opt_G), (straight.opt_D, resumed.opt_D)):
        for moments_a, moments_b in zip(
            a.state_dict()["state"].values(), b.state_dict()["state"].values(), strict=True
        ):
            assert states_equal(moments_a, moments_b)
    assert straight.model.G.pl_mean > 0


def test_freeze_d_freezes_the_top_blocks(data, tmp_path):
    base = train(tiny_stylegan2(data, steps=1), tmp_path / "base", live_dir=None)
    source = tmp_path / "base/checkpoints/latest.pt"
    params = tiny_stylegan2(data, steps=3, resume_from=str(source), stylegan2=dict(freeze_d=2))
    tuned = train(params, tmp_path / "tuned", live_dir=None)
    before, after = base.model.D, tuned.model.D
    for i, (block_before, block_after) in enumerate(
        zip(before.layers(), after.layers(), strict=True)
    ):
        same = states_equal(block_before.state_dict(), block_after.state_dict())
        assert same == (i < 2), f"block {i}"
    assert tuned.state.step == 3 and not tuned.resumed


def test_sampling_from_a_checkpoint_with_truncation(data, tmp_path):
    from pipeline.training.sampling import generate, seeded_latents

    train(tiny_stylegan2(data, steps=2), tmp_path, live_dir=None)
    loaded = load_generator(tmp_path / "checkpoints/latest.pt")
    assert loaded.model == "stylegan2" and has_mapping(loaded.G)
    z = seeded_latents([0, 1, 2], loaded.latent_dim)
    cpu = torch.device("cpu")
    average = generate(loaded.G, z, 0, cpu, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(average[0], average[1], atol=1e-5)
    assert torch.allclose(average[0], average[2], atol=1e-5)
    free = generate(loaded.G, z, 0, cpu, noise_mode="const")
    assert (free[0] - free[1]).abs().max() > 1e-3


def test_only_the_highest_resolutions_run_in_reduced_precision(data, tmp_path):
    model = tiny_model(reduced_precision_res=2, conv_clamp=256)
    dtypes = {}
    for block in model.G.synthesis_net.blocks:
        block.register_forward_hook(
            lambda module, args, out: dtypes.__setitem__(module.resolution, out[0].dtype)
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.G(torch.randn(2, 32))
        logits = model.D(images)
    assert dtypes == {4: torch.float32, 8: torch.float32, 16: torch.bfloat16, 32: torch.bfloat16}
    assert images.dtype == logits.dtype == torch.float32
    trainer = train(tiny_stylegan2(data, steps=2, precision="bf16"), tmp_path, live_dir=None)
    assert trainer.last_logs["loss/finite"] == 1.0
