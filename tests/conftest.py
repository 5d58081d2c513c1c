"""Shared fixtures: the real data in ../shared, a fake Steam on 127.0.0.1, a scratch repo."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fake_steam import CAPSULES, SHARED, FakeSteam

REPO = Path(__file__).resolve().parents[1]


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
def params_file(workdir) -> Path:
    """A copy of the repository's params.yaml in the working folder."""
    path = workdir / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


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
