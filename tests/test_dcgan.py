"""DCGAN and progressive DCGAN (PokeGAN) on the engine: networks, losses, label tricks,
stages, freezing, fade-in and bit-exact resume, on a few real images at 16-32 px."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.augment import BatchPart
from pipeline.metrics.evaluation import evaluate_generator
from pipeline.metrics.fid import feature_stats
from pipeline.metrics.reference import Reference
from pipeline.models import build_model
from pipeline.models.base import Batch, StepContext
from pipeline.models.dcgan import DCGAN, bce_targets, gradient_penalty
from pipeline.params import EvaluateParams
from pipeline.training.checkpoint import checksum, load_checkpoint, load_generator
from pipeline.training.loop import train
from pipeline.training.params import DCGANParams, TrainParams
from tests.train_helpers import TINY_DCGAN, flowers, tiny_dcgan, tiny_progan

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TINY_DCGAN
LOSSES = ("standard", "hinge", "relativistic", "relativistic_average", "wgan_gp")
NORMS = ("batch", "instance", "layer", "spectral", "none")


@pytest.fixture
def data(tmp_path):
    return flowers(tmp_path / "flowers", 16, 32)


def context(seed: int, rows: int) -> StepContext:
    generator = torch.Generator().manual_seed(seed)
    return StepContext(generator, BatchPart(rows, 0), rows, lambda x: x)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def real_batch(folder: Path, size: int) -> torch.Tensor:
    images = [
        np.asarray(Image.open(path).resize((size, size), Image.Resampling.BOX))
        for path in sorted(folder.glob("*.png"))
    ]
    return torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("norm", NORMS)
def test_dcgan_builds_at_every_size_with_every_norm(size, norm):
    torch.manual_seed(0)
    model = DCGAN(size, DCGANParams(**TINY, norm=norm))
    assert model.G.latent_dim == 16  # render reads it
    images = model.G(torch.randn(3, 16))
    assert images.shape == (3, 3, size, size) and images.abs().max() <= 1
    logits, features = model.D(images, features=True)
    assert logits.shape == (3,) and features.shape[0] == 3
    # 4×4 map doubled up to the size: log2(size / 4) blocks each way
    assert len(model.G.blocks) == len(model.D.blocks) == int(np.log2(size // 4))
    spectral = any("parametrizations" in name for name, _ in model.named_parameters())
    assert spectral == (norm == "spectral")


@pytest.mark.parametrize(("g_kernel", "d_kernel", "expected"), [(5, None, 5), (5, 3, 3), (3, 5, 5)])
def test_d_kernel_is_its_own_or_mirrors_g(g_kernel, d_kernel, expected):
    model = DCGAN(32, DCGANParams(**TINY, g_kernel=g_kernel, d_kernel=d_kernel))
    d_convs = [m for m in model.D.modules() if isinstance(m, torch.nn.Conv2d)]
    g_convs = [m for m in model.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert {m.kernel_size for m in d_convs} == {(expected, expected)}
    assert {m.kernel_size for m in g_convs} == {(g_kernel, g_kernel)}
    logits = model.D(model.G(torch.randn(2, 16)))
    assert logits.shape == (2,)


def test_pokegan_init_activation_and_g_dropout(data):
    """init kaiming: He normal over the fan-out on convolutions (std sqrt(2/(1+0.2²)/fan_out)),
    torch's default on linear layers, norms at exactly 1; G's LeakyReLU; G's dropout draws
    from the engine's generator (two contexts of one seed: the same fakes) and only while
    training (eval mode: none)."""
    cfg = DCGANParams(**TINY, init="kaiming", g_activation="leaky_relu", g_dropout=0.5)
    torch.manual_seed(0)
    model = DCGAN(32, cfg)
    conv = model.D.blocks["32"].layers[0]
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    expected = (2 / (1 + 0.2**2) / fan_out) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.1
    norm = model.G.blocks["8"].layers[1]
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert isinstance(model.G.blocks["8"].layers[2], torch.nn.LeakyReLU)
    real = Batch(real_batch(data, 32)[:4])
    fakes = []
    for _ in range(2):
        ctx = context(7, 4)
        model.g_loss(real, ctx)
        fakes.append(model.G(ctx.latents(16, "cpu")))
    assert torch.equal(fakes[0], fakes[1])
    model.eval()
    z = torch.randn(2, 16)
    assert torch.equal(model.G(z), model.G(z))


@pytest.mark.parametrize("group", [0, 4])
def test_minibatch_std_lets_d_see_the_rest_of_the_batch(group):
    """With ``minibatch_std`` D's logit for an image depends on the other images of its
    group (their spread is a feature), so a G that draws one image for every z is told
    apart; without it (eval mode: batch norm's running statistics, no dropout) it does not."""
    torch.manual_seed(0)
    model = DCGAN(32, DCGANParams(**TINY, minibatch_std=group)).eval()
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    changed = images.clone()
    changed[1:] = -changed[1:]  # every image but the first
    with torch.no_grad():
        before, after = model.D(images), model.D(changed)
    assert torch.equal(before[0], after[0]) == (group == 0)
    if group:
        features = torch.randn(8, 5, 4, 4)
        spread = model.D.minibatch_std(features)[:, -1]
        assert spread.min() > 0.5  # unit-variance features: a spread near 1
        copies = model.D.minibatch_std(features[:1].repeat(8, 1, 1, 1))[:, -1]
        assert copies.abs().max() < 1e-3  # one image eight times: no spread


@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
def test_dcgan_256_shapes_and_paper_initialisation(upsample):
    cfg = DCGANParams(latent_dim=8, channels=2, channel_max=8, upsample=upsample, init="normal")
    torch.manual_seed(0)
    model = DCGAN(256, cfg)
    torch.manual_seed(0)
    assert states_equal(model.state_dict(), DCGAN(256, cfg).state_dict())  # seeded
    weight = model.D.blocks["256"].layers[0].weight
    assert abs(weight.std().item() - 0.02) < 0.002  # N(0, 0.02)
    assert model.G(torch.randn(1, 8)).shape == (1, 3, 256, 256)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_is_finite_and_moves_d_the_right_way(data, loss):
    """One SGD step on D's loss raises D's logits on reals and lowers them on fakes (WGAN's
    critic loss without its penalty, which ``test_gradient_penalty_...`` covers)."""
    torch.manual_seed(0)
    cfg = DCGANParams(
        **TINY, loss=loss, dropout=0.0, norm="layer", label_noise=0, label_swap=0, gp_weight=0
    )
    model = DCGAN(16, cfg)
    batch = Batch(real_batch(data, 16))
    rows = batch.images.shape[0]
    outcome = model.d_loss(batch, context(1, rows))
    assert torch.isfinite(outcome.loss) and outcome.real_logits.shape == (rows,)
    with torch.no_grad():
        fake = model.G(context(1, rows).latents(cfg.latent_dim, "cpu"))  # d_loss's fakes
        before = model.D(batch.images).mean(), model.D(fake).mean()
    optimizer = torch.optim.SGD(model.D.parameters(), lr=0.05)
    outcome.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = model.D(batch.images).mean(), model.D(fake).mean()
    assert after[0] > before[0] and after[1] < before[1], (before, after)
    g_loss = model.g_loss(batch, context(2, rows))
    assert torch.isfinite(g_loss)


def test_gradient_penalty_steers_d_gradient_norm_towards_one(data):
    torch.manual_seed(0)
    model = DCGAN(16, DCGANParams(**TINY, loss="wgan_gp", dropout=0.0, norm="layer"))
    real = real_batch(data, 16)
    fake = model.G(context(1, 16).latents(16, "cpu")).detach()
    penalty = gradient_penalty(model.D, real, fake, context(2, 16))
    assert torch.isfinite(penalty) and penalty > 0
    penalty.backward()
    torch.optim.SGD(model.D.parameters(), lr=1e-3).step()
    assert gradient_penalty(model.D, real, fake, context(2, 16)) < penalty


def test_consistency_term_uses_two_dropout_passes(data):
    torch.manual_seed(0)
    cfg = DCGANParams(**TINY, loss="wgan_gp", consistency=2.0, dropout=0.5)
    model, ctx = DCGAN(16, cfg), context(1, 16)
    loss = model.d_loss(Batch(real_batch(data, 16)), ctx).loss
    assert torch.isfinite(loss) and ctx.logs["loss/D_ct"] > 0 and ctx.logs["loss/D_gp"] >= 0


def test_label_smoothing_noise_and_swap_act_at_their_rates():
    rows = 20_000
    cfg = DCGANParams(label_smoothing=0.1, label_noise=0.1, label_swap=0.03)
    real, fake = bce_targets(context(0, rows), cfg, "cpu")
    swapped = real < 0.5
    assert swapped.float().mean().item() == pytest.approx(0.03, abs=0.005)
    assert torch.equal(swapped, fake > 0.5)
    kept_real, kept_fake = real[~swapped], fake[~swapped]
    assert kept_real.min() >= 0.8 and kept_real.max() <= 0.9  # 0.9 minus up to 0.1 noise
    assert kept_real.mean().item() == pytest.approx(0.85, abs=0.003)
    assert kept_fake.min() >= 0 and kept_fake.max() <= 0.1
    assert kept_fake.mean().item() == pytest.approx(0.05, abs=0.003)
    plain = DCGANParams(label_smoothing=0, label_noise=0, label_swap=0)
    real, fake = bce_targets(context(0, 100), plain, "cpu")
    assert bool((real == 1).all()) and bool((fake == 0).all())


def test_dcgan_resumes_bit_for_bit(data, tmp_path):
    """D's dropout masks come from the engine's generator, so they resume too."""
    params = tiny_dcgan(data, steps=6, dcgan=dict(loss="relativistic_average"))
    straight = train(params, tmp_path / "a", live_dir=None)
    train(params, tmp_path / "b", live_dir=None, stop_at=3)
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert resumed.resumed and straight.augment_kind == "none"  # augment: auto is DCGAN's none
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())


def test_a_checkpoint_from_before_a_key_rebuilds_as_its_run_trained(data, tmp_path):
    """A checkpoint written before ``init``, ``g_activation`` and ``g_dropout`` existed holds
    none of them: it is rebuilt with what its run did (``later_keys``: the paper's ReLU and
    no G dropout), not with today's defaults (PokeGAN's LeakyReLU), and draws as it did."""
    paper = dict(init="normal", g_activation="relu", g_dropout=0.0)
    assert DCGANParams.later_keys.items() >= paper.items()
    assert DCGANParams().g_activation != "relu"  # else this test shows nothing
    result = train(tiny_dcgan(data, steps=2, dcgan=paper), tmp_path / "run", live_dir=None)
    checkpoint = load_checkpoint(tmp_path / "run/checkpoints/latest.pt")
    for key in DCGANParams.later_keys:
        del checkpoint["params"]["dcgan"][key]
    checkpoint["checksum"] = checksum(checkpoint)
    torch.save(checkpoint, tmp_path / "old.pt")
    loaded = load_generator(tmp_path / "old.pt")
    assert loaded.params.dcgan.model_dump().items() >= paper.items()
    z = torch.randn(4, 16)
    assert torch.equal(loaded.sample(z), result.G_ema.eval()(z))


# -- progressive growing: 16 px for 4 steps of 8 images, then 32 px ---------------------


def progan(data: Path, train_changes: dict | None = None, **changes) -> TrainParams:
    """16 px for 32 images (4 steps), then 32 px; ``changes`` to the progan section."""
    return tiny_progan(data, progan=changes, **(train_changes or {}))


def stage_16_params(model) -> dict[str, torch.Tensor]:
    """The weights stage 1 (32 px) inherits from stage 0 (16 px)."""
    names = ("G.project", "G.blocks.8.", "G.blocks.16.", "G.to_rgb.16", "D.from_rgb.16",
             "D.blocks.16.", "D.blocks.8.", "D.to_logit")  # fmt: skip
    return {
        name: value.detach().clone()
        for name, value in model.named_parameters()
        if name.startswith(names)
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_progan_freezes_the_previous_blocks_and_resumes_at_the_boundary(data, tmp_path, freeze):
    params = progan(data, freeze_previous=freeze)
    first = train(params, tmp_path / "run", live_dir=None, stop_at=4)  # exactly the boundary
    assert first.state.nimg == 32 and first.last_logs["progan/size"] == 16
    assert first.last_logs["lr/G"] == pytest.approx(5e-4)
    before = stage_16_params(first.model)
    seen: list[dict] = []
    resumed = train(
        params, tmp_path / "run", live_dir=None, progress=lambda s, logs: seen.append(logs)
    )
    assert resumed.resumed and {logs.get("progan/size") for logs in seen[1:]} == {32.0}
    assert resumed.last_logs["lr/G"] == pytest.approx(1e-3)  # stage lr null: the section's
    after = stage_16_params(resumed.model)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    if freeze:
        assert unchanged == list(before)  # bit for bit, although Adam has momentum for them
    else:  # all trained on, but the 16 px RGB layers, which a 32 px G and D no longer use
        assert unchanged == [n for n in before if n.startswith(("G.to_rgb", "D.from_rgb"))]
    assert not torch.equal(  # the new block trained in both cases
        first.model.state_dict()["G.blocks.32.layers.0.weight"],
        resumed.model.state_dict()["G.blocks.32.layers.0.weight"],
    )
    straight = train(params, tmp_path / "straight", live_dir=None)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())


def test_progan_fades_in_and_resumes_mid_fade(data, tmp_path):
    params = progan(data, fade_kimg=0.032, freeze_previous=False)
    seen: dict[int, dict] = {}
    straight = train(
        params, tmp_path / "a", live_dir=None, progress=lambda s, logs: seen.update({s: logs})
    )
    alphas = [seen[step]["progan/alpha"] for step in range(1, 9)]
    assert alphas == [1.0, 1.0, 1.0, 1.0, 0.0, 0.25, 0.5, 0.75]  # steps 5-8 fade 16 → 32
    train(params, tmp_path / "b", live_dir=None, stop_at=6)
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())
    # G (and its EMA) carry the stage they trained at: 32 px, alpha 0.75 at the last step
    assert straight.G_ema.stage_size.item() == 32 and straight.G_ema.stage_alpha.item() == 0.75


def test_progan_samples_at_its_stage_upscaled_to_image_size(data, tmp_path):
    train(progan(data, dict(steps=4, snapshot_every=4)), tmp_path, live_dir=None)
    checkpoint = load_checkpoint(tmp_path / "checkpoints/latest.pt")
    assert checkpoint["G_ema"]["stage_size"].item() == 16
    loaded = load_generator(tmp_path / "snapshots/step-00000004.pt")
    z = torch.randn(2, 16)
    images = loaded.sample(z)
    assert images.shape == (2, 3, 32, 32)
    assert torch.equal(loaded.G(z), images)  # what evaluate and render call
    assert loaded.G(z, 16).shape == (2, 3, 16, 16)  # what training calls
    blocks = images.unfold(2, 2, 2).unfold(3, 2, 2)  # nearest ×2: every 2×2 block is flat
    assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
    # evaluate warns that the metrics measure upscaled images (no Inception needed for
    # the warning: metrics without features, no face detector)
    cfg = EvaluateParams(checkpoint=str(tmp_path / "checkpoints/latest.pt"), metrics=["one_face"])
    features = np.zeros((8, 2048), np.float32)
    reference = Reference(features, feature_stats(features), key={})
    results = evaluate_generator(cfg, reference, inception=None)
    assert "a progan checkpoint at its 16 px stage" in results["warnings"]["stage"]


def test_progan_schedule_is_a_function_of_kimg():
    params = TrainParams(model="progan", image_size=64, progan=dict(TINY, fade_kimg=100))
    model = build_model(params)
    assert [model.stage_index(k) for k in (0, 199.99, 200, 599.9, 600, 5000)] == [0, 0, 1, 1, 2, 2]
    assert [model.stage_alpha(k) for k in (10, 200, 250, 300, 600, 650)] == [
        1.0, 0.0, 0.5, 1.0, 0.0, 0.5
    ]  # fmt: skip
    assert model.lr_factors(0) == {"G": 0.5, "D": 0.5}  # 5e-4 of the section's 1e-3
    assert model.lr_factors(700) == {"G": 0.2, "D": 0.2}


@pytest.mark.parametrize(
    ("size", "latent_size", "expected"),
    [
        (256, 4, [(16, 200, 5e-4), (32, 400, 2e-4), (64, 800, 2e-4), (128, 1600, 2e-4),
                  (256, 3200, 2e-4)]),
        (64, 4, [(16, 200, 5e-4), (32, 400, 2e-4), (64, 800, 2e-4)]),  # PokeGAN's own
        (32, 4, [(16, 200, 5e-4), (32, 400, 2e-4)]),
        (64, 8, [(32, 200, 5e-4), (64, 400, 2e-4)]),  # first stage 4 x latent_size
        (16, 4, [(16, 200, 5e-4)]),  # the smallest image_size: one stage
    ],
)  # fmt: skip
def test_progan_stages_null_grow_to_image_size(size, latent_size, expected):
    """`-S train.model=progan` alone trains at whatever image_size the pipeline ships."""
    params = TrainParams(model="progan", image_size=size, progan=dict(latent_size=latent_size))
    assert params.progan.stages is None
    stages = params.progan.growth(size)
    assert [(s.size, s.kimg, s.lr) for s in stages] == expected
    model = build_model(params)
    assert model.sizes == [s for s, _, _ in expected] and model.G.image_size == size


def test_progan_explicit_stages_that_end_below_image_size_name_the_fix():
    with pytest.raises(ValueError) as err:
        TrainParams(model="progan", image_size=256, progan=dict(stages=[dict(size=16, kimg=1)]))
    message = str(err.value)
    assert "progan.stages: the stages end at 16 px but image_size is 256" in message
    assert "leave stages null to grow to image_size, or end them at 256" in message


def test_progan_null_stages_and_the_list_they_stand_for_are_one_run():
    """A run started with the old explicit default list resumes under `stages: null`."""
    from pipeline.training.checkpoint import params_hash

    null = TrainParams(model="progan", image_size=64)
    explicit = TrainParams(
        model="progan",
        image_size=64,
        progan=dict(stages=[s.model_dump() for s in null.progan.growth(64)]),
    )
    assert params_hash(null, "data", "none") == params_hash(explicit, "data", "none")
    other = TrainParams(
        model="progan",
        image_size=64,
        progan=dict(stages=[dict(size=16, kimg=1), dict(size=32, kimg=1), dict(size=64, kimg=1)]),
    )
    assert params_hash(other, "data", "none") != params_hash(null, "data", "none")


def test_wgan_gp_and_fade_train_under_bf16_autocast(data, tmp_path):
    """Under autocast the fakes are bf16 and the reals fp32: the penalty mixes them in fp32."""
    params = progan(
        data, dict(steps=2, precision="bf16"), loss="wgan_gp", consistency=2.0, norm="layer",
        stages=[dict(size=16, kimg=0.008), dict(size=32, kimg=1)], fade_kimg=0.016,
    )  # fmt: skip
    trainer = train(params, tmp_path, live_dir=None)
    assert trainer.precision.name == "bf16" and trainer.last_logs["loss/finite"] == 1.0
    assert trainer.last_logs["progan/alpha"] == 0.0 and trainer.last_logs["loss/D_gp"] > 0
