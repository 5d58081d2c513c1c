"""The weights registry: download with checksum, cache hits, and one-line errors."""

import hashlib
import io
import os
import zipfile

import pytest
import torch

from pipeline.errors import StageError
from pipeline.weights import WEIGHTS, WeightFile, fetch_weights, load_state_dict


def checkpoint_bytes(**tensors) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors or {"w": torch.arange(6.0).reshape(2, 3)}, buffer)
    return buffer.getvalue()


@pytest.fixture
def served(httpserver):
    """A checkpoint served on 127.0.0.1 and its registry entry."""
    data = checkpoint_bytes()
    httpserver.expect_request("/w.pth").respond_with_data(data)
    spec = WeightFile("test", "w.pth", httpserver.url_for("/w.pth"), sha(data), "a test file")
    return spec, data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_registry_names_url_file_and_checksum():
    assert {"retinaface_mobilenet0.25_1mb", "retinaface_resnet50", "s3fd"} <= set(WEIGHTS)
    for spec in WEIGHTS.values():
        assert spec.url.startswith("https://") and spec.file
        assert spec.sha256 is None or len(spec.sha256) >= 8
    # the one we can check here: the shared Face-Detector-1MB checkpoint's digest
    assert WEIGHTS["retinaface_mobilenet0.25_1mb"].sha256.startswith("ed6fa7d4")


def test_download_then_cache_hit(served, tmp_path, httpserver):
    spec, data = served
    path = fetch_weights(spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / "w.pth" and path.read_bytes() == data
    assert fetch_weights(spec, tmp_path / "cache") == path
    assert len(httpserver.log) == 1  # the second call used the cached file
    assert torch.equal(load_state_dict(path)["w"], torch.arange(6.0).reshape(2, 3))


def test_sha256_prefix_is_enough(served, tmp_path):
    spec, data = served
    prefix = WeightFile(spec.name, spec.file, spec.url, sha(data)[:10], spec.about)
    assert fetch_weights(prefix, tmp_path).exists()


def test_wrong_checksum_keeps_nothing_and_says_where_to_put_it(served, tmp_path):
    spec, _ = served
    bad = WeightFile(spec.name, spec.file, spec.url, "0" * 64, spec.about)
    with pytest.raises(StageError) as err:
        fetch_weights(bad, tmp_path)
    message = str(err.value)
    assert "w.pth" in message and "sha256" in message and str(tmp_path / "w.pth") in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no half-trusted file left behind


def test_offline_names_file_url_and_destination(tmp_path):
    spec = WeightFile("x", "x.pth", "http://127.0.0.1:9/x.pth", None, "a file")  # port 9: closed
    with pytest.raises(StageError) as err:
        fetch_weights(spec, tmp_path, timeout_s=2)
    message = str(err.value)
    assert "x.pth" in message and spec.url in message and str(tmp_path / "x.pth") in message
    assert "\n" not in message


def test_http_error_is_one_line(httpserver, tmp_path):
    httpserver.expect_request("/gone.pth").respond_with_data("no", status=404)
    spec = WeightFile("g", "gone.pth", httpserver.url_for("/gone.pth"), None, "a file")
    with pytest.raises(StageError, match=r"gone\.pth: .*HTTP 404.*put it at"):
        fetch_weights(spec, tmp_path)


def test_missing_with_downloads_off(served, tmp_path, httpserver):
    spec, _ = served
    with pytest.raises(StageError, match=r"w\.pth: missing .*download .* and put it at"):
        fetch_weights(spec, tmp_path, download=False)
    assert len(httpserver.log) == 0


def test_corrupt_cached_file_is_reported_not_replaced(served, tmp_path, httpserver):
    spec, _ = served
    (tmp_path / "w.pth").write_bytes(b"truncated")
    with pytest.raises(StageError, match=r"w\.pth: sha256 .* delete it to download it again"):
        fetch_weights(spec, tmp_path)
    assert (tmp_path / "w.pth").read_bytes() == b"truncated" and len(httpserver.log) == 0


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04broken zip"])
def test_unloadable_checkpoint_is_one_line(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(StageError, match=r"bad\.pth: not a loadable PyTorch checkpoint"):
        load_state_dict(tmp_path / "bad.pth")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code when unpickled is not loaded."""
    torch.save({"w": torch.zeros(1), "code": WeightFile("a", "b", "c", None, "d")}, tmp_path / "x")
    with pytest.raises(StageError, match="not a loadable PyTorch checkpoint"):
        load_state_dict(tmp_path / "x")


def test_legacy_hub_zip_and_wrapped_state_dict(tmp_path):
    """ternaus' release is a zip holding one checkpoint; training checkpoints nest state_dict."""
    with zipfile.ZipFile(tmp_path / "r.zip", "w") as archive:
        archive.writestr("r.pth", checkpoint_bytes(a=torch.ones(2)))
    assert torch.equal(load_state_dict(tmp_path / "r.zip")["a"], torch.ones(2))
    torch.save({"state_dict": {"b": torch.ones(1)}, "epoch": 3}, tmp_path / "c.ckpt")
    assert set(load_state_dict(tmp_path / "c.ckpt")) == {"b"}


def test_verified_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import pipeline.weights as weights

    calls = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda path: calls.append(path) or real(path))
    path = tmp_path / "big.pt"
    path.write_bytes(b"a" * 1000)
    first = weights.cached_sha256(path, tmp_path / "cache")
    assert first == sha(b"a" * 1000) and len(calls) == 1
    assert weights.cached_sha256(path, tmp_path / "cache") == first and len(calls) == 1
    assert (tmp_path / "cache" / weights.DIGEST_CACHE).is_file()
    path.write_bytes(b"b" * 1000)  # same size and file, new contents and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert weights.cached_sha256(path, tmp_path / "cache") == sha(b"b" * 1000)
    assert len(calls) == 2
    (tmp_path / "cache" / weights.DIGEST_CACHE).write_text("not json")  # a damaged memo
    assert weights.cached_sha256(path, tmp_path / "cache") == sha(b"b" * 1000)


def test_unreachable_server_says_which_params_work_offline(tmp_path):
    spec = WeightFile("u", "u.pth", "http://127.0.0.1:9/u.pth", None, "a file")
    with pytest.raises(StageError) as err:
        fetch_weights(spec, tmp_path)
    message = str(err.value)
    assert message.startswith("u.pth: not in ") and "ConnectionError" in message
    assert message.endswith(
        "offline? set the stage's weights_dir or weights to a local file, or use "
        "params.offline.yaml (docs/offline.md)"
    )
    assert "\n" not in message
