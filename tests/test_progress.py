"""Progress bars on a narrow terminal keep their numbers."""

import io
import re

import pytest
from rich.console import Console

from pipeline.progress import progress_bar


@pytest.mark.parametrize("width", [60, 80, 120])
def test_count_and_eta_stay_visible_at_narrow_widths(width):
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    description = "faces face_alignment+retinaface @ original, 256"
    with progress_bar(150_000, description, console=console) as advance:
        advance(31_600, status="retinaface 316 · face_alignment 316 · from the cache 0")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).replace("\r", "\n")
    last = [line for line in text.splitlines() if "/150000" in line][-1]
    assert "31600/150000" in last and "eta" in last and "0:00:0" in last
    assert len(last) <= width
    if width >= 120:
        assert "faces face_alignment+retinaface" in last


def test_a_part_has_its_own_bar_and_moves_the_whole():
    """A long part (render's projection) shows its own count and ETA under the stage's bar,
    and each of its steps also moves the stage's bar; the part's bar goes when it is done."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    with progress_bar(110, "render stylegan2", console=console) as advance:
        advance(10, status="fakes")
        with advance.part("projection of 4 images", 100) as step:
            for _ in range(40):
                step()
            tasks = advance.bar.tasks
            assert [t.completed for t in tasks] == [50, 40]
            assert tasks[1].total == 100 and "projection" in tasks[1].description
        assert [t.completed for t in advance.bar.tasks] == [50]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).replace("\r", "\n")
    assert any("projection of 4 images" in line and "/100" in line for line in text.splitlines())


def test_without_a_terminal_a_plain_line_at_each_interval(monkeypatch):
    """Under nohup, CI or a pipe a redrawn bar shows nothing until the end: each bar prints a
    plain line (count, percent, recent rate, elapsed, ETA, status) at the interval, and one
    when it ends."""
    monkeypatch.setenv("STEAMGAN_PROGRESS_EVERY", "0")
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    assert not console.is_terminal
    with progress_bar(100, "train lightweight 32px", console=console) as advance:
        advance(40, status="kimg 0.6 · 12 img/s")  # a resumed run's first jump
        advance(10, status="kimg 0.8 · 12 img/s")
        with advance.part("projection of 4 images", 20) as step:
            step(20)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train lightweight 32px: 40/100 (40.0%) · ")
    assert "eta " in lines[0] and lines[0].endswith("kimg 0.6 · 12 img/s")
    assert lines[1].startswith("train lightweight 32px: 50/100 (50.0%) · ")
    assert any(line.startswith("projection of 4 images: 20/20 (100.0%)") for line in lines)
    assert "done" in lines[-1] and lines[-1].startswith("train lightweight 32px: 70/100")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_without_a_terminal_quick_work_prints_only_its_last_line(monkeypatch):
    monkeypatch.delenv("STEAMGAN_PROGRESS_EVERY", raising=False)
    out = io.StringIO()
    with progress_bar(None, "appids (steamspy)", console=Console(file=out, width=200)) as advance:
        for _ in range(500):
            advance()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("appids (steamspy): 500 · ") and "done" in line
