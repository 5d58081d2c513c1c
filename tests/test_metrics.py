"""The metrics' math against references and known answers (no Inception network here)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from pipeline.metrics.fid import (
    GaussianStats,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
)
from pipeline.metrics.inception import resize_clean, resize_legacy_tensorflow
from pipeline.metrics.inception_score import inception_score
from pipeline.metrics.kid import kernel_inception_distance
from pipeline.metrics.ppl import filtered_mean, path_lengths, perceptual_path_length, slerp
from pipeline.metrics.precision_recall import precision_recall
from pipeline.models.base import NoiseInjection


def sqrtm_fid(a: GaussianStats, b: GaussianStats) -> float:
    """The textbook formula with scipy's matrix square root (pytorch-fid's way)."""
    root = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(root))


def random_covariance(rng, dim):
    m = rng.standard_normal((dim, dim))
    return m @ m.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_of_known_gaussians():
    # diagonal covariances: FID = |μ1 − μ2|² + Σ (√a − √b)²
    a = GaussianStats(np.array([0.0, 1.0, 2.0]), np.diag([1.0, 4.0, 9.0]), 0)
    b = GaussianStats(np.array([1.0, 1.0, 0.0]), np.diag([4.0, 1.0, 1.0]), 0)
    expected = (1 + 0 + 4) + (1 + 1 + 4)
    assert frechet_distance_from_stats(a, b) == pytest.approx(expected, rel=1e-12)
    # full covariances: the same as scipy.linalg.sqrtm
    rng = np.random.default_rng(0)
    for dim in (2, 16, 128):
        a = GaussianStats(rng.standard_normal(dim), random_covariance(rng, dim), 0)
        b = GaussianStats(rng.standard_normal(dim), random_covariance(rng, dim), 0)
        assert frechet_distance_from_stats(a, b) == pytest.approx(sqrtm_fid(a, b), rel=1e-8)
        assert frechet_distance_from_stats(a, a) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_samples_converges_to_the_gaussians():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 4))
    y = rng.standard_normal((20_000, 4)) * 2 + 1  # N(1, 4I): FID = 4·1 + 4·(2 − 1)² = 8
    assert frechet_distance(x, y) == pytest.approx(8, rel=0.03)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        feature_stats(x[:1])


class Features(nn.Module):
    """torchmetrics' custom feature extractor: our features are its 'images'."""

    def __init__(self, width: int):
        super().__init__()
        self.num_features = width

    def forward(self, x):
        return x


@pytest.mark.parametrize("count", [300, 12])  # full rank, and rank-deficient like few images
def test_fid_equals_torchmetrics_on_the_same_features(count):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(count)
    # Inception-like features: non-negative and correlated; 256 wide, since torchmetrics'
    # general eigendecomposition takes a minute at 2048 on two cores
    mix = rng.standard_normal((64, 256)) / 8
    real = np.maximum(rng.standard_normal((count, 64)) @ mix, 0).astype(np.float32)
    fake = np.maximum((rng.standard_normal((count, 64)) + 0.3) @ mix, 0).astype(np.float32)
    reference = FrechetInceptionDistance(feature=Features(256))
    reference.update(torch.from_numpy(real), real=True)
    reference.update(torch.from_numpy(fake), real=False)
    theirs = float(reference.compute())
    ours = frechet_distance(real, fake)
    assert ours == pytest.approx(theirs, rel=1e-3)
    # with fewer images than dimensions the low-rank route is taken: the same value
    full = frechet_distance_from_stats(feature_stats(real), feature_stats(fake))
    assert ours == pytest.approx(full, rel=1e-6)


def test_kid_is_exact_on_point_masses():
    # every x is a, every y is b: MMD² = k(a, a) + k(b, b) − 2 k(a, b), k = (xᵀy/D + 1)³
    a, b = np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])

    def k(u, v):
        return (u @ v / 4 + 1) ** 3

    real, fake = np.tile(a, (20, 1)), np.tile(b, (30, 1))
    mean, std = kernel_inception_distance(real, fake, subsets=5, subset_size=10)
    assert mean == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-12)
    assert std == pytest.approx(0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_is_unbiased_where_a_biased_estimate_is_not():
    """Two samples of one distribution: the expected MMD² is 0. Averaged over many subsets
    the unbiased estimate is within noise of 0, while the biased V-statistic (diagonal
    kept) is clearly positive at this subset size."""
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((4000, 16)), rng.standard_normal((4000, 16))
    mean, std = kernel_inception_distance(real, fake, subsets=400, subset_size=20, seed=3)
    assert abs(mean) < 4 * std / math.sqrt(400)
    x, y = real[:20], fake[:20]
    kxx, kyy, kxy = ((x @ x.T / 16 + 1) ** 3, (y @ y.T / 16 + 1) ** 3, (x @ y.T / 16 + 1) ** 3)
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert biased > 10 * std / math.sqrt(400)
    # different distributions: clearly positive, and the same as torchmetrics on one subset
    from torchmetrics.image.kid import KernelInceptionDistance

    shifted = rng.standard_normal((50, 16)) + 0.5
    ours, _ = kernel_inception_distance(real[:50], shifted, subsets=1, subset_size=50)
    metric = KernelInceptionDistance(feature=Features(16), subsets=1, subset_size=50)
    metric.update(torch.from_numpy(real[:50]), real=True)
    metric.update(torch.from_numpy(shifted), real=False)
    assert ours > 0 and ours == pytest.approx(float(metric.compute()[0]), rel=1e-6)


def test_precision_recall_on_toy_manifolds():
    rng = np.random.default_rng(4)
    real = rng.uniform(0, 1, (200, 3))
    near = real + rng.normal(0, 1e-4, real.shape)  # inside every real ball
    far = rng.uniform(100, 101, (200, 3))  # nowhere near the real data
    assert precision_recall(real, near) == (1.0, 1.0)
    assert precision_recall(real, far) == (0.0, 0.0)
    # half the samples good and covering all the data, half off the manifold
    precision, recall = precision_recall(real, np.concatenate([near, far]), block=64)
    assert (precision, recall) == (0.5, 1.0)
    # mode collapse: good samples of one corner of the data only
    corner = np.argsort(np.linalg.norm(real, axis=1))[:20]
    precision, recall = precision_recall(real, near[corner])
    assert precision == 1.0 and recall < 0.3


def test_inception_score_known_answers():
    classes = 10
    one_hot = np.eye(classes)[np.arange(100) % classes]
    assert inception_score(one_hot, splits=10) == pytest.approx((classes, 0), abs=1e-6)
    same = np.tile(np.full(classes, 1 / classes), (100, 1))
    assert inception_score(same, splits=10) == pytest.approx((1, 0), abs=1e-9)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(one_hot[:5])


def test_resize_legacy_tensorflow_is_tf1_bilinear():
    # TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False), 2 → 4 pixels:
    # output i samples the input at i·2/4 = 0, 0.5, 1, 1.5 → a, (a+b)/2, b, b (edge repeated)
    row = torch.tensor([[[[10.0, 30.0]]]])
    out = resize_legacy_tensorflow(row.expand(1, 1, 2, 2), size=4)
    assert out[0, 0, 0].tolist() == [10.0, 20.0, 30.0, 30.0]
    assert out[0, 0, :, 1].tolist() == [20.0] * 4
    # shrinking 4 → 2 samples pixels 0 and 2: no antialiasing
    wide = torch.tensor([[[[0.0, 100.0, 50.0, 7.0]]]]).expand(1, 1, 4, 4)
    assert resize_legacy_tensorflow(wide, size=2)[0, 0, 0].tolist() == [0.0, 50.0]


def test_resize_clean_is_pil_bicubic_on_float():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert np.allclose(resize_clean(flat), 77, atol=1e-3)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = resize_clean(image)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255  # bicubic overshoot is clipped
    # shrinking averages (antialiased): a fine checkerboard becomes flat grey
    checker = ((np.indices((598, 598)).sum(0) % 2) * 255).astype(np.uint8)
    small = resize_clean(np.stack([checker] * 3, axis=2))
    assert np.abs(small[2:-2, 2:-2] - 127.5).max() < 0.5  # (the border pixels differ a bit)
    # where the legacy resize aliases: it samples every other pixel, all of one colour
    legacy = resize_legacy_tensorflow(torch.from_numpy(checker).float()[None, None])
    assert legacy.unique().tolist() == [0.0]


class ToyStyleGenerator(nn.Module):
    """A linear style-based generator: mapping z ↦ zM (per ws), synthesis ws ↦ S·w₀.

    Its path length in W is known exactly: ‖S (w₁ − w₀)‖² for the squared-L2 distance.
    """

    def __init__(self, dim=8, num_ws=3, side=4):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.latent_dim, self.w_dim, self.num_ws, self.side = dim, dim, num_ws, side
        self.M = nn.Parameter(torch.randn(dim, dim, generator=gen) / dim**0.5)
        self.S = nn.Parameter(torch.randn(3 * side * side, dim, generator=gen))
        self.register_buffer("w_avg", torch.zeros(dim))
        self.noise = NoiseInjection()
        self.noise.weight.data.fill_(1.0)

    def mapping(self, z, truncation_psi=1, truncation_cutoff=None):
        w = z @ self.M
        w = self.w_avg + (w - self.w_avg) * truncation_psi
        return w[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws):
        images = (ws[:, 0] @ self.S.T).view(-1, 3, self.side, self.side)
        return self.noise(images)

    def forward(self, z, truncation_psi=1, truncation_cutoff=None):
        return self.synthesis(self.mapping(z, truncation_psi))


def squared_l2(a, b):
    return ((a - b) ** 2).flatten(1).sum(1)


def test_path_lengths_equal_the_known_lengths_of_linear_generators():
    G = ToyStyleGenerator().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    t = torch.zeros(6, 1)
    G.noise.mode = "none"
    # W, end sampling: ‖S (w1 − w0)‖², whatever ε
    w0, w1 = G.mapping(z0)[:, 0], G.mapping(z1)[:, 0]
    expected_w = ((w1 - w0) @ G.S.T).pow(2).sum(1)
    got = path_lengths(G, squared_l2, z0, z1, t, "w", epsilon=1e-3)
    assert torch.allclose(got, expected_w, rtol=1e-3)
    # Z: along the great circle (scaled to norm √dim) at speed Ω = angle(z0, z1), so a
    # generator that is the identity up to a scale c has length c²·dim·Ω²
    cos = torch.nn.functional.cosine_similarity(z0, z1)
    expected_z = 3.0**2 * 8 * torch.acos(cos) ** 2
    scaled = ScaleBy(3.0)
    for at in (0.0, 0.5):
        got = path_lengths(scaled, squared_l2, z0, z1, torch.full((6, 1), at), "z", 1e-3)
        assert torch.allclose(got, expected_z, rtol=1e-3)
    # slerp stays on the unit sphere and reaches b's direction at t = 1
    end = slerp(z0, z1, torch.ones(6, 1))
    assert torch.allclose(end, z1 / z1.norm(dim=1, keepdim=True), atol=1e-5)


class ScaleBy(nn.Module):
    """G(z) = c·z (as a 1×1 "image" per coordinate)."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c), requires_grad=False)

    def forward(self, z):
        return (z * self.c)[:, :, None, None]


def test_ppl_gives_both_images_of_a_pair_the_same_noise():
    G = ToyStyleGenerator().requires_grad_(False)  # noise of weight 1 on every pixel
    with_noise = perceptual_path_length(G, squared_l2, 64, 8, "w", epsilon=1e-4, batch_size=16)
    G.noise.weight.data.zero_()
    without = perceptual_path_length(G, squared_l2, 64, 8, "w", epsilon=1e-4, batch_size=16)
    # independent noise would add ~2·48/ε² = 1e10 per pair
    assert with_noise == pytest.approx(without, rel=1e-2)
    assert G.noise.mode == "random" and G.noise.source is None  # left as found


def test_filtered_mean_drops_the_outer_percentiles():
    lengths = np.array([1.0] * 998 + [1e9, -1e9])
    assert filtered_mean(lengths) == 1.0
    assert filtered_mean(np.arange(1.0, 101.0)) == pytest.approx(50.5)
