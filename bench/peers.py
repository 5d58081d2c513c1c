"""What the benchmarks that run a peer package share (bench/gpu/bench.py, bench/quality.py):
the shim that lets lightweight-gan, written for CUDA only, run on a CPU, and where peer
packages installed outside the project environment are found."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# peers installed with `pip install --no-deps --target .peers/site ...` (git-ignored), kept
# out of the project's environment; only a peer's own process puts this on sys.path
PEER_SITE = REPO / ".peers" / "site"


def use_peer_site() -> None:
    """Put .peers/site first on sys.path (if it exists): call only in a peer's process."""
    if PEER_SITE.is_dir() and str(PEER_SITE) not in sys.path:
        sys.path.insert(0, str(PEER_SITE))


@contextlib.contextmanager
def lightweight_gan_on_cpu():
    """For a machine without CUDA: lightweight-gan's Trainer moves every tensor with
    ``.cuda()`` and builds ``torch.device('cuda:N')``; these shims map both to the CPU, and
    stand in for torchvision (imported at its top, used only by its dataset and image
    saving, which the step does not touch) where torchvision is not installed. On a GPU,
    use nothing: the package runs as shipped."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda, sys.modules.get("torchvision")
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    if importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.utils = types.ModuleType("torchvision.utils")
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
    is_available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # its module asserts CUDA when imported
    try:
        import lightweight_gan.lightweight_gan as lg

        torch.cuda.is_available = is_available

        cpu_torch = types.ModuleType("torch")
        cpu_torch.__getattr__ = lambda name: getattr(torch, name)
        cpu_torch.device = lambda *a, **k: torch.device("cpu")
        lg.torch = cpu_torch
        yield
    finally:
        torch.cuda.is_available = is_available
        torch.Tensor.cuda, torch.nn.Module.cuda = saved[0], saved[1]
        if saved[2] is None:
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.transforms", None)


def peer_importable(module: str) -> bool:
    """Whether a peer's module can be imported, from .peers/site or the environment,
    without putting .peers/site on this process's sys.path."""
    import importlib.machinery

    paths = [str(PEER_SITE), *sys.path] if PEER_SITE.is_dir() else sys.path
    return importlib.machinery.PathFinder.find_spec(module, paths) is not None


def gpu_bench():
    """bench/gpu/bench.py (not a package): NVlabs' trainer as the GPU check builds it."""
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench/gpu/bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# NVlabs stylegan2-ada-pytorch's code, copied from the fetch tool's mirror by
# bench/gpu/prepare.py (its licence forbids committing it)
NVLABS = REPO / ".peers" / "stylegan2-ada-pytorch"

# PokeGAN (frgfm/PokeGAN, MIT): not on PyPI; `fetch github:frgfm/PokeGAN` mirrors it and
# `python bench/peers.py pokegan` copies its code here (git-ignored, never committed).
POKEGAN = REPO / ".peers" / "PokeGAN"
POKEGAN_MIRROR = Path("/work/.mirror/frgfm+PokeGAN/repo")


def prepare_pokegan(mirror: Path = POKEGAN_MIRROR) -> Path:
    """Copy PokeGAN's ``torchgan/`` package from the fetch tool's mirror into .peers/."""
    import io
    import subprocess
    import tarfile

    if not mirror.is_dir():
        sys.exit(f"{mirror} is absent: mirror github:frgfm/PokeGAN with the fetch tool first")
    archive = subprocess.run(
        ["git", "--git-dir", str(mirror), "archive", "HEAD", "torchgan", "LICENSE"],
        check=True,
        capture_output=True,
    ).stdout
    POKEGAN.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(POKEGAN, filter="data")
    return POKEGAN


@contextlib.contextmanager
def pokegan_on_cpu():
    """PokeGAN's trainer as shipped, made importable and runnable here: its ``torchgan``
    from .peers/PokeGAN; ``.cuda()`` kept on the CPU where there is no GPU; stand-ins for
    matplotlib (its sample display, which the race does not call) and fastprogress (its
    progress bars: a plain iteration) when they are not installed."""
    saved_modules = {name: sys.modules.get(name) for name in ("matplotlib", "fastprogress")}
    saved_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
    if importlib.util.find_spec("matplotlib") is None:
        matplotlib = types.ModuleType("matplotlib")
        matplotlib.pyplot = types.ModuleType("matplotlib.pyplot")
        sys.modules.update({"matplotlib": matplotlib, "matplotlib.pyplot": matplotlib.pyplot})
    if importlib.util.find_spec("fastprogress") is None:

        class Bar:
            def __init__(self, items=(), parent=None, **_):
                self.items, self.comment = items, ""

            def __iter__(self):
                return iter(self.items)

        progress = types.ModuleType("fastprogress")
        progress.master_bar = progress.progress_bar = Bar
        progress.fastprogress = types.ModuleType("fastprogress.fastprogress")
        progress.fastprogress.ConsoleMasterBar = Bar
        sys.modules.update({"fastprogress": progress,
                            "fastprogress.fastprogress": progress.fastprogress})  # fmt: skip
    sys.path.insert(0, str(POKEGAN))
    try:
        yield
    finally:
        sys.path.remove(str(POKEGAN))
        torch.Tensor.cuda, torch.nn.Module.cuda = saved_cuda
        for name, module in saved_modules.items():
            if module is None:
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    sys.modules.pop(key)


if __name__ == "__main__":
    if sys.argv[1:] == ["pokegan"]:
        print(f"PokeGAN's code → {prepare_pokegan()}")
    else:
        sys.exit("usage: python bench/peers.py pokegan")
