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
