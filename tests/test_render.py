"""The render stage: what each render draws, checked on its content."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import StageError
from pipeline.params import validate_params
from pipeline.render import directions as dirs
from pipeline.render import grids, interpolation, mixing, projection
from pipeline.render.params import ProjectParams, RenderParams
from pipeline.render.run import render
from pipeline.render.synthesis import Synth, slerp
from pipeline.render.video import write_videos
from pipeline.training.checkpoint import TrainedGenerator, load_generator
from pipeline.training.params import TrainParams
from tests.conftest import run_cli, set_args
from tests.style_helpers import TinyStyleGenerator
from tests.train_helpers import flowers, tiny, tiny_stylegan2

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 4-step Lightweight GAN on 32×32 flowers, snapshots at steps 2 and 4."""
    from pipeline.training.loop import train

    root = tmp_path_factory.mktemp("run")
    data = flowers(root / "data/dataset", count=16)
    train(tiny(data, steps=4, snapshot_every=2), root / "data/train", live_dir=None)
    return root


@pytest.fixture(scope="module")
def stylegan2_run(trained_run) -> Path:
    """A 2-step tiny StyleGAN2 on the same flowers, a snapshot after each step."""
    from pipeline.training.loop import train

    params = tiny_stylegan2(trained_run / "data/dataset", steps=2, snapshot_every=1)
    train(params, trained_run / "sg", live_dir=None)
    return trained_run / "sg"


@pytest.fixture
def styled() -> Synth:
    return Synth(TinyStyleGenerator(), CPU, batch=8, noise_mode="const")


def styled_trained(G: torch.nn.Module) -> TrainedGenerator:
    return TrainedGenerator(G, "tiny_style", 32, G.latent_dim, 0.0, TrainParams(), Path("fixture"))


def frame_counts(gif: Path, mp4: Path) -> tuple[int, int, tuple[int, int]]:
    with Image.open(gif) as im:
        gif_frames = im.n_frames
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    return gif_frames, sum(1 for _ in reader), tuple(meta["size"])


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def test_lightweight_gets_grids_and_z_video_and_says_what_it_cannot(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    (trained_run / "params.yaml").write_text("{}\n")
    overrides = ["render.grid=[2, 3]", "render.seeds=[3, 1, 4]", "render.frames=5"]
    result = run_cli("render", *set_args(overrides))
    assert result.exit_code == 0, result.output
    assert "lightweight has no mapping network (W space): no truncation, mixing" in result.output
    out = trained_run / "data/render"
    assert Image.open(out / "images/fakes.png").size == (3 * 32, 2 * 32)
    assert Image.open(out / "images/reals.png").size == (3 * 32, 2 * 32)
    # progress: one row per seed, one column per snapshot (steps 2 and 4)
    assert Image.open(out / "images/progress.png").size == (2 * 32, 3 * 32)
    gif, mp4, size = frame_counts(
        out / "images/interpolation-z.gif", out / "videos/interpolation-z.mp4"
    )
    assert (gif, mp4, size) == (15, 15, (32, 32))  # 5 frames per leg, 3 legs (a loop)
    summary = json.loads((out / "render.json").read_text())
    assert list(summary["rendered"]) == ["fakes", "reals", "progress", "interpolation_z"]
    assert summary["rendered"]["progress"]["kimg"] == [0.016, 0.032]
    assert set(summary["unsupported"]) == {
        "truncation", "mixing", "interpolation_w", "ganspace", "sefa", "projection"
    }  # fmt: skip
    assert not (out / "images/truncation.png").exists()
    # the fakes are the fixed seeds 0-5, drawn again the same
    trained = load_generator(trained_run / "data/train/checkpoints/latest.pt")
    again = grids.fakes_grid(Synth(trained.G, CPU, noise_mode="const"), 2, 3)
    assert np.array_equal(np.asarray(Image.open(out / "images/fakes.png")), np.asarray(again))


def test_reals_grid_shows_dataset_images(trained_run):
    images, names = grids.real_images(trained_run / "data/dataset", 4, 32)
    assert images.shape == (4, 3, 32, 32) and len(set(names)) == 4
    first = Image.open(trained_run / "data/dataset" / names[0]).convert("RGB")
    expected = torch.from_numpy(np.asarray(first).copy()).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(images[0], expected, atol=1e-6)
    resized, _ = grids.real_images(trained_run / "data/dataset", 2, 16)  # to G's size
    assert resized.shape == (2, 3, 16, 16)
    with pytest.raises(StageError, match=r"render.data: .*missing not found"):
        grids.real_images(trained_run / "missing", 2, 32)


def test_random_noise_is_frozen_across_images_and_batches(trained_run):
    trained = load_generator(trained_run / "data/train/checkpoints/latest.pt")
    synth = Synth(trained.G, CPU, batch=3, noise_mode="random")
    z = synth.z([7]).repeat(5, 1)
    images = synth.images(z)  # rows 0-2 in one batch, 3-4 in the next
    assert all(torch.equal(images[0], image) for image in images[1:])
    # while the noise inputs do change an image: another frozen draw differs
    other = Synth(trained.G, CPU, batch=3, noise_mode="random", noise_seed=1).images(z[:1])
    assert not torch.equal(images[0], other[0])


def test_slerp_loop_passes_through_every_seed_on_the_sphere():
    keys = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    path = interpolation.loop_path(keys, 4, spherical=True)
    assert path.shape == (12, 64)
    assert torch.allclose(path[::4], keys, atol=1e-5)
    halfway = slerp(keys[:1], keys[1:2], torch.tensor([0.5]))
    assert torch.allclose(halfway.norm(), (keys[0].norm() + keys[1].norm()) / 2, rtol=0.05)


def test_truncation_psi_zero_is_the_average_image_for_every_seed(styled):
    seeds = [0, 1, 2, 3]
    table = grids.truncation_grid(styled, seeds, [0.5, 0.0]).reshape(4, 3, 3, 32, 32)
    average = styled.average_image()[0]
    for row in table:
        assert torch.allclose(row[2], average, atol=1e-5)
    # ψ = 1 keeps the seeds apart, and ψ = 0.5 lies between each image and the average
    assert distance(table[0, 0], table[1, 0]) > 0.05
    for row in table:
        assert distance(row[1], average) < distance(row[0], average)


def test_mixing_rows_share_coarse_structure(styled):
    rows, cols = [10, 11, 12], [20, 21, 22, 23]
    table = mixing.mixing_grid(styled, rows, cols, crossover=4).reshape(4, 5, 3, 32, 32)
    assert torch.equal(table[0, 0], torch.ones(3, 32, 32))  # the blank corner
    mixed = table[1:, 1:]
    within = [
        distance(mixed[r, a], mixed[r, b]) for r in range(3) for a in range(4) for b in range(a)
    ]
    unrelated = [
        distance(mixed[r, a], mixed[s, b])
        for r in range(3) for s in range(r) for a in range(4) for b in range(4) if a != b
    ]  # fmt: skip
    assert sum(within) / len(within) < sum(unrelated) / len(unrelated)
    # the row and column sources are the seeds' own images
    assert torch.allclose(table[1:, 0], styled.images(styled.z(rows)), atol=1e-5)
    assert torch.allclose(table[0, 1:], styled.images(styled.z(cols)), atol=1e-5)
    with pytest.raises(StageError, match=r"render\.mixing\.crossover: 8 must be between 1 and 7"):
        mixing.mixing_grid(styled, rows, cols, crossover=8)


def test_mix_ws_takes_coarse_from_rows_and_the_rest_from_columns():
    row_ws, col_ws = torch.zeros(2, 6, 3), torch.ones(3, 6, 3)
    mixed = mixing.mix_ws(row_ws, col_ws, 2).reshape(2, 3, 6, 3)
    assert mixed[:, :, :2].eq(0).all() and mixed[:, :, 2:].eq(1).all()


def test_directions_are_the_closed_forms(styled):
    stats = styled.w_stats(2000, seed=0)
    found = dirs.ganspace(stats, 3)
    gram = found.vectors @ found.vectors.T
    assert torch.allclose(gram, torch.eye(3), atol=1e-4)
    assert found.scores == sorted(found.scores, reverse=True)
    # σ along the first component is the largest spread of W along any unit direction
    for _ in range(5):
        other = torch.randn(styled.G.w_dim)
        assert stats.std_along(other) <= found.sigmas[0] + 1e-4

    sefa = dirs.sefa(styled, stats, 3, layers=[0, 1])
    stacked = torch.cat([w.detach() for w in styled.G.modulation_weights()[:2]])
    top = float((stacked @ sefa.vectors[0]).norm())
    for _ in range(5):
        other = torch.nn.functional.normalize(torch.randn(styled.G.w_dim), dim=0)
        assert float((stacked @ other).norm()) <= top + 1e-4
    with pytest.raises(StageError, match=r"render\.directions\.layers"):
        dirs.sefa(styled, stats, 3, layers=[8])

    edits = dirs.edit_rows(styled, 5, found, steps=5, strength=2.0).reshape(3, 5, 3, 32, 32)
    unedited = styled.images(styled.z([5]))[0]
    for row in edits:
        assert torch.allclose(row[2], unedited, atol=1e-5)  # amount 0 in the middle
        assert distance(row[0], row[4]) > 1e-3
    # editing only the fine layers leaves a coarse-only edit's layers alone: another image
    fine = dirs.edit_rows(styled, 5, found, steps=5, strength=2.0, layers=[6, 7])
    assert not torch.allclose(fine.reshape(3, 5, 3, 32, 32)[0, 0], edits[0, 0])


@pytest.mark.parametrize("space", ["w", "w_plus"])
def test_projection_lowers_its_loss(styled, trained_run, tmp_path, space):
    targets, _ = grids.real_images(trained_run / "data/dataset", 2, 32)
    p = ProjectParams(
        steps=40, space=space, lr=0.05, weights_dir=str(tmp_path), download_weights=False
    )
    loss = projection.reconstruction_loss(p, CPU)
    assert loss.name == "pixel_mse"  # no LPIPS weights offline, and no feature network given
    assert "LPIPS-VGG16 unavailable" in loss.note and "vgg16-397923af.pth" in loss.note
    stats = styled.w_stats(1000, seed=0)
    result = projection.project(styled, targets, stats, p, loss)
    assert all(f < s for f, s in zip(result.final_loss, result.start_loss, strict=True))
    assert result.ws.shape == (2, 8, 16)
    if space == "w":  # one w for every layer
        assert torch.equal(result.ws[:, :1].expand(-1, 8, -1), result.ws)
    assert len(result.frames) == 1 + 4 and result.frames[0].shape == (2 * 32, 2 * 32, 3)
    assert styled.G.noises[0].const.shape == (1, 1, 4, 4)  # the generator is left as it was


def test_projection_with_a_feature_network_uses_both_terms(styled, trained_run, tmp_path):
    # A stand-in for the FID Inception network (N×3×299×299 in about [-1, 1] to N×2048),
    # which the evaluate stage brings: a fixed random conv net, differentiable.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 9, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)
    ).requires_grad_(False)
    seen = []
    features = projection.inception_features(lambda x: seen.append(x.shape) or net(x))
    p = ProjectParams(steps=30, lr=0.05, loss="pixel_inception", weights_dir=str(tmp_path))
    loss = projection.reconstruction_loss(p, CPU, lambda: features)
    assert loss.name == "pixel_mse+inception_features" and loss.note == ""
    targets, _ = grids.real_images(trained_run / "data/dataset", 1, 32)
    pixel_only = projection.pixel_feature_distance(None, 1.0, 0.0)
    start = styled.average_image()
    assert float(loss.function(start, targets)) > float(pixel_only(start, targets))
    assert seen[-1] == (1, 3, 299, 299)  # resized for the Inception network
    result = projection.project(styled, targets, styled.w_stats(500, 0), p, loss)
    assert result.final_loss[0] < result.start_loss[0]
    # the network is loaded only when its features are used
    calls = []
    lpips = ProjectParams(loss="lpips", lpips_vgg=str(tmp_path / "none.pth"))
    with pytest.raises(StageError):
        projection.reconstruction_loss(lpips, CPU, lambda: calls.append(1))
    assert calls == []


def test_lpips_is_refused_plainly_when_asked_for_without_weights(tmp_path):
    p = ProjectParams(loss="lpips", weights_dir=str(tmp_path), download_weights=False)
    with pytest.raises(StageError, match=r"vgg16-397923af\.pth"):
        projection.reconstruction_loss(p, CPU)


def test_noise_penalty_is_small_for_white_noise_and_large_for_a_picture():
    white = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.avg_pool2d(white, 5, stride=1, padding=2)
    smooth = (smooth - smooth.mean()) / smooth.std()
    assert projection.noise_penalty([smooth]) > 20 * projection.noise_penalty([white])


def test_videos_decode_with_every_frame(tmp_path):
    frames = [torch.randint(0, 255, (4, 16, 32, 3), dtype=torch.uint8).numpy() for _ in range(3)]
    count = write_videos(frames, 10, tmp_path / "a.gif", tmp_path / "a.mp4")
    assert count == 12
    assert frame_counts(tmp_path / "a.gif", tmp_path / "a.mp4") == (12, 12, (32, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no leftovers


def test_style_model_gets_every_render(trained_run, tmp_path):
    G = TinyStyleGenerator()
    p = RenderParams(
        snapshots=None,
        data=str(trained_run / "data/dataset"),
        grid=(2, 2),
        seeds=[0, 1],
        truncation=[0.5],
        frames=3,
        w_samples=500,
        mixing=dict(rows=[1, 2], cols=[3, 4, 5]),
        directions=dict(count=2, steps=3),
        project=dict(targets=2, steps=10, video_every=5, download_weights=False,
                     weights_dir=str(tmp_path / "weights")),
    )  # fmt: skip
    ticks = []
    summary = render(
        styled_trained(G), p, tmp_path / "out", CPU, advance=lambda *a, **k: ticks.append(1)
    )
    out = tmp_path / "out"
    assert list(summary["rendered"]) == [
        "fakes", "reals", "interpolation_z", "truncation", "mixing", "interpolation_w",
        "ganspace", "sefa", "projection",
    ]  # fmt: skip
    assert summary["unsupported"] == {"progress": "render.snapshots is null"}
    assert Image.open(out / "images/truncation.png").size == (2 * 32, 2 * 32)
    assert Image.open(out / "images/average.png").size == (32, 32)
    for name in ("mixing.png", "mixing-psi0.5.png"):
        assert Image.open(out / "images" / name).size == (4 * 32, 3 * 32)
    for name in ("ganspace.png", "sefa.png"):
        assert Image.open(out / "images" / name).size == (3 * 32, 2 * 32)
    assert Image.open(out / "images/projection.png").size == (3 * 32, 2 * 32)
    gif, mp4, size = frame_counts(
        out / "images/interpolation-w.gif", out / "videos/interpolation-w.mp4"
    )
    assert (gif, mp4, size) == (6, 6, (32, 32))
    _, mp4, size = frame_counts(out / "images/projection.gif", out / "videos/projection.mp4")
    assert (mp4, size) == (3, (64, 64))  # start, step 5, step 10; targets stacked
    projected = summary["rendered"]["projection"]
    assert projected["loss"] == "pixel_mse" and "LPIPS-VGG16 unavailable" in projected["loss_note"]
    assert torch.load(out / "projection.pt", weights_only=True)["ws"].shape == (2, 8, 16)
    from pipeline.render.run import unsupported, work_units

    assert len(ticks) == work_units(p, unsupported(G, "tiny_style"))


def test_stylegan2_checkpoint_gets_every_render(trained_run, stylegan2_run, monkeypatch):
    monkeypatch.chdir(trained_run)
    (trained_run / "params.yaml").write_text("{}\n")
    overrides = [
        "render.checkpoint=sg/checkpoints/latest.pt",
        "render.snapshots=sg/snapshots",
        "render.grid=[2, 2]",
        "render.seeds=[0, 1]",
        "render.truncation=[0.0]",
        "render.frames=3",
        "render.w_samples=500",
        "render.mixing.rows=[10, 11, 12]",
        "render.mixing.cols=[20, 21, 22, 23]",
        "render.directions.count=2",
        "render.directions.steps=3",
        "render.project.targets=1",  # a batch of one
        "render.project.steps=12",
        "render.project.video_every=4",
        "render.project.download_weights=false",
        f"render.project.weights_dir={trained_run / 'no-weights'}",
    ]
    result = run_cli("render", *set_args(overrides))
    assert result.exit_code == 0, result.output
    # no LPIPS weights: the real FID Inception network gives the feature half of the loss
    assert "render: projection loss pixel_mse+inception_features\n" in result.output
    # why not LPIPS: the missing file once, in one short line; the full fix in render.json
    assert (
        "render: projection on pixel_mse+inception_features: vgg16-397923af.pth missing "
        "(where to get it: data/render/render.json" in result.output
    )
    assert result.output.count("vgg16-397923af.pth") == 1
    out = trained_run / "data/render"
    summary = json.loads((out / "render.json").read_text())
    assert summary["model"] == "stylegan2" and summary["unsupported"] == {}
    assert list(summary["rendered"]) == [
        "fakes", "reals", "progress", "interpolation_z", "truncation", "mixing",
        "interpolation_w", "ganspace", "sefa", "projection",
    ]  # fmt: skip
    assert Image.open(out / "images/progress.png").size == (2 * 32, 2 * 32)  # steps 1, 2

    def picture(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(out / "images" / name)).copy())

    # ψ = 0: both seeds' truncated images are the average image
    truncation, average = picture("truncation.png"), picture("average.png")
    assert truncation.shape == (2 * 32, 2 * 32, 3)
    for row in (0, 32):
        cell = truncation[row : row + 32, 32:64].int()
        assert (cell - average.int()).abs().max() <= 1  # PNG rounding
    assert not torch.equal(truncation[:32, :32], truncation[32:, :32])  # ψ = 1 differs
    # style mixing on the real generator: a row's mixes share its coarse styles
    mixed = picture("mixing.png").float().reshape(4, 32, 5, 32, 3).permute(0, 2, 1, 3, 4)[1:, 1:]
    within = [
        distance(mixed[r, a], mixed[r, b]) for r in range(3) for a in range(4) for b in range(a)
    ]
    unrelated = [
        distance(mixed[r, a], mixed[q, b])
        for r in range(3) for q in range(r) for a in range(4) for b in range(4) if a != b
    ]  # fmt: skip
    assert sum(within) / len(within) < sum(unrelated) / len(unrelated)
    for name, frames in (("interpolation-z", 6), ("interpolation-w", 6), ("projection", 4)):
        gif, mp4, _ = frame_counts(out / f"images/{name}.gif", out / f"videos/{name}.mp4")
        assert mp4 == frames and gif <= frames
    projected = summary["rendered"]["projection"]
    assert projected["final_loss"][0] < projected["start_loss"][0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["projection"]["final_loss"] == projected["final_loss"][0]


def test_stylegan2_samples_a_batch_of_one_like_a_larger_batch(stylegan2_run):
    G = load_generator(stylegan2_run / "checkpoints/latest.pt").G
    synth = Synth(G, CPU, batch=1, noise_mode="const")
    z = synth.z([3, 4])
    assert torch.allclose(synth.images(z), Synth(G, CPU, batch=2).images(z), atol=1e-4)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"seeds": [1]}, "render.seeds: [1] is not allowed: at least two seeds"),
        ({"truncation": [3]}, "render.truncation: 3 is not allowed: Input should be less than"),
        ({"project": {"space": "z"}}, "render.project.space: 'z' is not allowed"),
        ({"mixing": {"rows": []}}, "render.mixing.rows: [] is not allowed"),
        ({"directions": {"steps": 1}}, "render.directions.steps: 1 is not allowed"),
    ],
)
def test_bad_render_params_name_the_key(raw, expected):
    with pytest.raises(StageError) as err:
        validate_params({"render": raw})
    assert str(err.value).startswith(f"params.yaml: {expected}"), str(err.value)


def test_missing_checkpoint_is_one_line(workdir, params_file):
    result = run_cli("render", "-S", "render.checkpoint=nowhere.pt")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "steamgan render: error: render.checkpoint: nowhere.pt not found; run the train stage "
        "(dvc repro train) or point it at a checkpoint or snapshot"
    )
    Path("broken.pt").write_bytes(b"not a checkpoint")
    result = run_cli("render", "-S", "render.checkpoint=broken.pt")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "broken.pt: not a loadable checkpoint" in result.output


def test_parts_draws_only_the_parts_listed_and_says_so(trained_run, tmp_path):
    """`render.parts` picks what to draw: the rest is listed as not asked for, costs
    nothing, and the progress bar's total counts only what is drawn."""
    G = TinyStyleGenerator()
    p = RenderParams(
        snapshots=None, data=str(trained_run / "data/dataset"), grid=(2, 2), seeds=[0, 1],
        truncation=[0.5], frames=3, w_samples=500, parts=["fakes", "truncation"],
    )  # fmt: skip
    ticks = []
    summary = render(
        styled_trained(G), p, tmp_path / "out", CPU, advance=lambda *a, **k: ticks.append(1)
    )
    assert list(summary["rendered"]) == ["fakes", "truncation"]
    assert summary["unsupported"]["projection"] == "not in render.parts"
    assert summary["unsupported"]["reals"] == "not in render.parts"
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == [
        "average.png", "fakes.png", "truncation.png"
    ]  # fmt: skip
    from pipeline.render.run import left_out, work_units

    assert len(ticks) == work_units(p, left_out(p, G, "tiny_style")) == 2


def test_projection_steps_and_video_frames_auto_fit_the_device():
    p = RenderParams()
    assert p.project.steps == "auto" and p.frames == "auto"
    gpu, cpu = p.for_device("cuda"), p.for_device("cpu")
    assert (gpu.project.steps, gpu.frames) == (1000, 60)
    assert (cpu.project.steps, cpu.frames) == (20, 12)
    fixed = RenderParams(project=dict(steps=7), frames=5)
    assert fixed.for_device("cpu").project.steps == 7 and fixed.for_device("cuda") is fixed
    assert fixed.for_device("cpu").frames == 5
