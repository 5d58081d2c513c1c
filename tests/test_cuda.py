"""The CUDA code paths: precision modes, channels_last, torch.compile, NCCL, the faces
detector's fp16 batches and Inception on the GPU, each against the CPU or fp32 where that
means something. They run only with CUDA (``pytest -m cuda``, what bench/gpu/run.sh does
on a lent GPU) and skip with the reason "no CUDA" elsewhere.

Only this file is collected on the GPU machine: it imports nothing that needs imagecodecs
or dvc, which the GPU check does not carry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline.faces import load_detector
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.inception import FeatureSink
from pipeline.training.loop import Trainer, train
from tests.conftest import needs_shared
from tests.cuda_helpers import banners, flowers, inception_for_check
from tests.train_helpers import flowers as flower_folder
from tests.train_helpers import tiny, tiny_dcgan, tiny_progan, tiny_stylegan2

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"),
]

# DCGAN with the gradient penalty (a double backward under autocast); progressive DCGAN
# 16 px for 2 steps, then fading into 32 px: both stages and the fade in 4 steps
GROWING = dict(stages=[dict(size=16, kimg=0.016), dict(size=32, kimg=1)], fade_kimg=0.008)
MODELS = {
    "lightweight": tiny,
    "stylegan2": tiny_stylegan2,
    "dcgan": lambda data, **changes: tiny_dcgan(data, dcgan=dict(loss="wgan_gp"), **changes),
    "progan": lambda data, **changes: tiny_progan(data, progan=GROWING, **changes),
}


def trainer_for(tmp_path, model: str, **changes) -> Trainer:
    data = flower_folder(tmp_path / "flowers", count=32, size=32)
    params = MODELS[model](data, device="cuda", **changes)
    return Trainer(params, tmp_path / "out", live_dir=None)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("model", list(MODELS))
def test_a_training_step_runs_in_each_precision_with_channels_last(tmp_path, model, precision):
    trainer = trainer_for(tmp_path, model, precision=precision, channels_last=True)
    assert trainer.precision.name == precision
    assert trainer.scaler_G.is_enabled() == (precision == "fp16")
    convs = [p for p in trainer.model.G.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    before = {k: v.clone() for k, v in trainer.model.G.state_dict().items()}
    batches = trainer._batches()
    # fp16: GradScaler starts at 2^16 and skips the steps that overflow while it backs off
    # (StyleGAN2's path-length steps took three halvings); then 4 steps in a row, both lazy
    # regularisation phases among them, must count. bf16 and fp32 count from the first.
    results = []
    for _ in range(16 if precision == "fp16" else 4):
        results = [*results, trainer.train_step(batches)][-4:]
        if len(results) == 4 and all(ok for ok, _ in results):
            break
    assert all(ok for ok, _ in results), [logs for _, logs in results]
    for _, logs in results:
        assert all(np.isfinite(v) for v in logs.values() if isinstance(v, float))
    after = trainer.model.G.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in trainer.model.G.parameters())  # master weights


@pytest.mark.parametrize("model", ["lightweight", "stylegan2"])
def test_fp16_skips_a_step_whose_gradients_overflowed(tmp_path, model):
    trainer = trainer_for(tmp_path, model, precision="fp16")
    trainer.train_step(trainer._batches())  # the scaler has seen one good step
    G, scaler = trainer.model.G, trainer.scaler_G
    scale = scaler.get_scale()
    before = [p.detach().clone() for p in G.parameters()]
    for p in G.parameters():
        p.grad = torch.full_like(p, float("inf"))
    ok = trainer._apply("G", [torch.zeros((), device=trainer.device)])
    assert not ok  # counted as a bad step: no EMA update, towards nan_tolerance
    assert all(torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))
    assert scaler.get_scale() == scale * scaler.get_backoff_factor()


def test_compiled_lightweight_gan_trains(tmp_path):
    trainer = trainer_for(tmp_path, "lightweight", precision="bf16", compile=True)
    batches = trainer._batches()
    results = [trainer.train_step(batches) for _ in range(3)]
    assert all(ok for ok, _ in results)


def test_retinaface_fp16_batch_on_cuda_finds_what_the_cpu_finds():
    weights = needs_shared("weights", "retinaface_mobilenet0.25.pth")
    images = banners(48)
    options = dict(variant="mobilenet0.25_1mb", weights=weights, confidence=0.9, nms=0.4)
    on_cuda = load_detector("retinaface", device="cuda", batch_size=16, **options).detect(images)
    on_cpu = load_detector("retinaface", device="cpu", batch_size=16, **options).detect(images)
    assert sum(len(f.boxes) for f in on_cpu) > 10  # real faces were found at all
    for index, (gpu, cpu) in enumerate(zip(on_cuda, on_cpu, strict=True)):
        assert len(gpu.boxes) == len(cpu.boxes), f"image {index}: face counts differ"
        order_gpu, order_cpu = np.lexsort(gpu.boxes.T[::-1]), np.lexsort(cpu.boxes.T[::-1])
        difference = np.abs(gpu.boxes[order_gpu] - cpu.boxes[order_cpu])
        assert difference.size == 0 or difference.max() <= 1.0, f"image {index}: {difference}"


def test_inception_features_on_cuda_match_the_cpu_and_so_does_the_fid():
    first, second = flowers(200), flowers(200, offset=200)
    features = {}
    for device in ("cpu", "cuda"):
        model = inception_for_check(device)
        for name, images in (("first", first), ("second", second)):
            sink = FeatureSink(model, "clean", len(images))
            for start in range(0, len(images), 50):
                sink.add(images[start : start + 50])
            features[device, name] = sink.result()[0]
    difference = np.abs(features["cuda", "first"] - features["cpu", "first"]).max()
    scale = np.abs(features["cpu", "first"]).max()
    print(
        f"Inception ({model.source.name}) CUDA vs CPU: max abs feature difference {difference:.3g}"
    )
    assert difference <= 1e-3 * scale
    fid_cpu = frechet_distance(features["cpu", "first"], features["cpu", "second"])
    fid_cuda = frechet_distance(features["cuda", "first"], features["cuda", "second"])
    print(f"FID 200 vs 200: CPU {fid_cpu:.4f}, CUDA {fid_cuda:.4f}")
    assert fid_cpu > 0 and abs(fid_cuda - fid_cpu) <= 1e-3 * fid_cpu


def _nccl_worker(rank: int, world: int, port: int, params, out_dir: str) -> None:
    from tests.test_train_ddp import worker

    worker(rank, world, port, params, out_dir)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="no CUDA" if not torch.cuda.is_available() else "one GPU (NCCL needs 2)",
)
def test_two_processes_over_nccl_match_one_with_the_whole_batch(tmp_path):
    from pipeline.training.checkpoint import load_checkpoint
    from tests.test_train_ddp import free_port

    data = flower_folder(tmp_path / "flowers")
    params = tiny(data, steps=1, batch_size=8, mirror=True, device="cuda", precision="fp32")
    mp.spawn(_nccl_worker, args=(2, free_port(), params, str(tmp_path / "ddp")), nprocs=2)
    single = train(params, tmp_path / "single", live_dir=None)
    ddp = load_checkpoint(tmp_path / "ddp/checkpoints/latest.pt")
    assert ddp["state"]["step"] == 1 and ddp["state"]["nimg"] == 8
    bound = 2 * params.lightweight.lr + 1e-5  # as test_train_ddp: Adam's first step
    for key, value in single.model.G.state_dict().items():
        assert torch.allclose(ddp["G"][key].float().cpu(), value.float().cpu(), atol=bound), key
