"""A stand-in for the GPU machine's Python on this CPU machine, for ``run.sh --dry-run``.

    python bench/gpu/rehearsal.py VENV      prints VENV/bin/python

The venv sees only (1) the packages the GPU machine has (``machine-packages.txt``), linked
from this Python's site-packages where they are installed here, and (2) what run.sh then
installs from the wheelhouse into /tmp/site. A machine package the wheelhouse needs but this
Python lacks (einops, tqdm…) is downloaded into ``.whl-cp311/machine/`` and installed
beside the links. So an import that works in the dry run works with the machine's package
set too; what it cannot prove is the machine's versions (torch 2.11 there, 2.13 here), nor
the 3.12 wheels themselves (``wheelhouse.py --check`` proves their closure; the dry run
installs the same name==version set built for this Python).

torchvision is on the machine but has no build for this torch here: it is left out, and
only lightweight-gan's import needs it (bench.py stands in for it in the dry run).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from wheelhouse import machine_packages, requirements, wheels  # noqa: E402

NOT_HERE = {"torchvision"}  # no build for this machine's torch (see above)


def installed() -> dict[str, importlib.metadata.Distribution]:
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist)
    return found


def link_base(base: Path, names: set[str], here: dict) -> None:
    """Link each installed machine package's top-level files and folders into ``base``."""
    site = Path(sysconfig.get_paths()["purelib"])
    base.mkdir(parents=True, exist_ok=True)
    for name in sorted(names & set(here)):
        dist = here[name]
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source, target = site / top, base / top
            if source.exists() and not target.exists():
                target.symlink_to(source)


def machine_extras(base: Path, python: str, here: dict) -> None:
    """Machine packages that the wheelhouse needs and this Python lacks, from the registry."""
    machine = machine_packages()
    needed = set()
    for wheel in wheels(REPO / ".whl").values():
        for req in requirements(wheel, python):
            name = canonicalize_name(req.name)
            if name in machine and name not in here and name not in NOT_HERE:
                needed.add(name)
    if not needed:
        return
    folder = REPO / ".whl-cp311" / "machine"
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "download", "--no-deps", "-d", str(folder), *sorted(needed)], check=True)
    subprocess.run(
        [*pip, "install", "--no-index", "--no-deps", "--target", str(base),
         *map(str, folder.glob("*.whl"))],
        check=True,
    )  # fmt: skip


def main() -> None:
    venv = Path(sys.argv[1])
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True
    )
    here = installed()
    base = venv / "machine-packages"
    link_base(base, machine_packages() - NOT_HERE, here)
    machine_extras(base, python, here)
    site = venv / "lib" / f"python{python}" / "site-packages"
    (site / "machine-packages.pth").write_text(str(base.resolve()) + "\n")
    print(venv / "bin" / "python")


if __name__ == "__main__":
    main()
