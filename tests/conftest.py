"""Shared fixtures: the real data in ../shared, a fake Steam on 127.0.0.1, a scratch repo."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.fake_steam import CAPSULES, SHARED, FakeSteam

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def shipped_params_text() -> str:
    """params.yaml as committed (HEAD), not as the workspace holds it: `dvc exp run` leaves
    the last experiment's values in the workspace file (DVC's documented behaviour), and the
    suite must pass whatever the user ran last. Outside a git checkout: the file itself."""
    shown = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    if shown.returncode == 0 and shown.stdout.strip():
        return shown.stdout
    return (REPO / "params.yaml").read_text()


def write_shipped_params(path: Path) -> Path:
    """The committed params.yaml written to ``path`` (a file or a folder to put it in)."""
    path = path / "params.yaml" if path.is_dir() else path
    path.write_text(shipped_params_text())
    return path


def allow_small_datasets(params: Path) -> Path:
    """``params`` with dataset.min_images 1: the tests' datasets are a few real images, far
    below the shipped floor (tested on its own in test_dataset)."""
    raw = yaml.safe_load(params.read_text())
    raw.setdefault("dataset", {})["min_images"] = 1
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


# The repository's own outputs: a test writes only under its tmp folder, never here (a
# stray write makes `dvc status` report the user's pipeline as modified).
GUARDED_OUTPUTS = ("data", "dvclive", "dvc_plots")


def output_state(root: Path = REPO) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under the guarded output folders of ``root``."""
    state = {}
    for name in GUARDED_OUTPUTS:
        for dirpath, _, files in os.walk(root / name):
            for file in files:
                path = os.path.join(dirpath, file)
                with contextlib.suppress(FileNotFoundError):
                    info = os.stat(path)
                    state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


# The modules that take longest (minutes of `dvc` runs and trainings killed and resumed),
# longest first. The suite runs on pytest-xdist workers a module at a time (pyproject's
# addopts: ``--dist loadfile``, so a module's shared fixtures are set up once, in this order:
# ``--no-loadscope-reorder``); a long module started last would end the run alone while the
# other workers sit idle.
LONGEST_FIRST = (
    "test_pipeline_e2e.py",
    "test_models_e2e.py",
    "test_learning.py",  # five trainings of 9-26 s: 84 s
    "test_train.py",
    "test_every_model.py",
    "test_train_safety.py",
    "test_translate.py",
    "test_faces_retinaface.py",
    "test_evaluate.py",
    "test_stylegan2.py",
    "test_mix.py",
    "test_report.py",
    "test_download.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: test order kept


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny networks run as fast on one as on several, and
    the other xdist worker keeps its core (a module opts in with ``usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def repo_outputs_untouched():
    """Fail the test that created, changed or removed a file in the work tree's outputs."""
    before = output_state()
    yield
    after = output_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        shown = ", ".join(changed[:5]) + more
        pytest.fail(f"the test wrote into the repository's own outputs: {shown}", pytrace=False)


@pytest.fixture(scope="session")
def torch_default_threads() -> int:
    """torch's own thread count in this process, before any stage changed it."""
    import torch  # once per session; nearly every test module imports it anyway

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # pytest-xdist: share the cores, or each worker's threads fight the others'
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def torch_threads_restored(torch_default_threads):
    """Each test starts with torch's default thread count. A stage run in this process
    (run_cli), in a test or in a module-scoped fixture set up before the test, sets it for
    the whole process (the ``threads`` params), and results that are compared bit for bit
    (resume tests) depend on the thread count their floats were reduced with."""
    import torch

    torch.set_num_threads(torch_default_threads)
    yield
    torch.set_num_threads(torch_default_threads)


def needs_shared(*parts: str) -> Path:
    """The path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real test data lives in ../shared beside the repo)")
    return path


@pytest.fixture
def capsules() -> Path:
    return needs_shared("data", "steam_capsules")


@pytest.fixture
def steam(capsules):
    with FakeSteam() as server:
        yield server


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run a test inside an empty folder, as a stage runs in the repo root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shipped_params(tmp_path) -> Path:
    """The committed params.yaml in the test's tmp folder (not its working folder)."""
    return write_shipped_params(tmp_path / "params.yaml")


@pytest.fixture
def params_file(workdir) -> Path:
    """The committed params.yaml in the working folder."""
    return write_shipped_params(workdir / "params.yaml")


def steam_overrides(steam: FakeSteam, timeout_s: float = 1.0) -> list[str]:
    """-S options pointing every network param at the fake Steam, with short timeouts."""
    return [
        f"appids.steam_api_url={steam.app_list_url}",
        f"appids.steamspy_url={steam.steamspy_url}",
        "appids.steamspy_delay_s=0",
        f"download.cdn_url={steam.cdn_url}",
        "download.kind=capsule_184x69",
        f"download.timeout_s={timeout_s}",
        "download.retries=2",
        "download.backoff_s=0.05",
        "download.rate_per_s=null",
    ]


def run_cli(*args: str):
    """Run ``steamgan ARGS`` in this process; return click's result."""
    from stages.cli import app

    return CliRunner().invoke(app, list(args))


def set_args(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("-S", o)]


__all__ = ["CAPSULES", "REPO", "needs_shared", "run_cli", "set_args", "steam_overrides"]
