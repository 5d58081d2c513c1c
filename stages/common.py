"""What every stage CLI shares: ``--params``/``-S`` options and turning errors into one line."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import StageError
from pipeline.params import Params, load_params

ParamsOption = Annotated[
    Path, typer.Option("--params", help="Params file (one section per stage).", show_default=True)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-S",
        help="Override a param, as `dvc exp run -S`: section.key=value (repeatable).",
        show_default=False,
    ),
]


def stage_app(help_text: str) -> typer.Typer:
    return typer.Typer(add_completion=False, help=help_text, pretty_exceptions_enable=False)


def fail(stage: str, message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"steamgan {stage}: error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def run_stage(stage: str, params: Path, overrides: list[str] | None) -> Iterator[Params]:
    """Load and validate params, then run the block; any failure becomes one line and exit 1.

    ``STEAMGAN_DEBUG=1`` re-raises unexpected errors with their traceback.
    """
    with one_line_errors(stage):
        yield load_params(params, overrides or ())


@contextlib.contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    """Any failure in the block becomes ``steamgan COMMAND: error: …`` and a non-zero exit."""
    try:
        yield
    except StageError as exc:
        raise fail(command, str(exc)) from None
    except KeyboardInterrupt:
        raise fail(command, "interrupted; run it again to resume", 130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("STEAMGAN_DEBUG"):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        raise fail(
            command, f"{exc.__class__.__name__}: {first_line} (STEAMGAN_DEBUG=1 for a traceback)"
        ) from None


def say(message: str) -> None:
    """A summary line for people, on stderr next to the progress bars."""
    print(message, file=sys.stderr)


# A missing weights file, in pipeline.weights' messages ("x.pth: missing (...)", "x.pth: not
# in DIR and the download failed (...)").
MISSING_WEIGHTS = re.compile(r"([\w.\-]+\.(?:pth|pt|zip)): (?:missing|not in )")


def say_reasons(stage: str, reasons: dict[str, str], details: Path | str) -> None:
    """One short line per cause for what a stage could not do (``reasons``: what → why).

    Several metrics missing one weights file (VGG16 serves precision/recall and PPL's LPIPS)
    get one line naming the file; the full fix (path, URL) is in ``details`` (notes.json)."""
    by_cause: dict[str, list[str]] = {}
    for what, why in reasons.items():
        missing = MISSING_WEIGHTS.search(why)
        cause = (
            f'{missing.group(1)} missing (where to get it: {details}; README "Run it offline")'
            if missing
            else why
        )
        by_cause.setdefault(cause, []).append(what)
    for cause, whats in by_cause.items():
        say(f"{stage}: {', '.join(whats)}: {cause}")
