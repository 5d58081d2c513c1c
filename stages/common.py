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

from pipeline import io as pio
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


class StageApp(typer.Typer):
    """A stage's typer app whose command's ``--help`` ends with the params it reads."""

    def __init__(self, help_text: str, sections: tuple[str, ...]):
        super().__init__(add_completion=False, help=help_text, pretty_exceptions_enable=False)
        self.sections = sections

    def command(self, *args, **kwargs):
        kwargs.setdefault("epilog", params_help(self.sections))
        return super().command(*args, **kwargs)


def stage_app(help_text: str, *sections: str) -> typer.Typer:
    """The app of a stage reading ``sections`` of params.yaml (listed by ``--help``)."""
    return StageApp(help_text, sections)


def yaml_comments(path: Path) -> dict[str, str]:
    """``section.key`` → the comment on its line in a params file (its one-line meaning)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = re.match(r"^(\s*)([A-Za-z_]\w*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if "#" in rest:
            comments[".".join(k for _, k in stack)] = rest.split("#", 1)[1].strip()
    return comments


def params_help(sections: tuple[str, ...]) -> str:
    """Every key of ``sections`` with its default (from the pydantic models) and its meaning
    (the comment beside it in the repository's params.yaml), one per line."""
    from pydantic import BaseModel

    from pipeline.params import Params

    comments = yaml_comments(Path(__file__).resolve().parents[1] / "params.yaml")
    defaults = Params()
    lines = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            key = f"{prefix}.{field.alias or name}"
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, key)
                continue
            shown = value.value if hasattr(value, "value") else value
            shown = list(shown) if isinstance(shown, tuple) else shown
            meaning = comments.get(key, "")
            lines.append(
                f"{key} = {'null' if shown is None else shown}"
                + (f"  # {meaning}" if meaning else "")
            )

    for section in sections:
        walk(defaults.section(section), section)
    return "Params (params.yaml, or -S key=value):\n\n" + "\n".join(lines)


def require_checkpoint(key: str, path: str | Path) -> Path:
    """``path`` (params ``key``) as a Path, or stop naming it and how to make one."""
    if not Path(path).is_file():
        raise StageError(
            f"{key}: {path} not found; run the train stage "
            "(dvc repro train) or point it at a checkpoint or snapshot"
        )
    return Path(path)


def fail(stage: str, message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"steamgan {stage}: error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def run_stage(stage: str, params: Path, overrides: list[str] | None) -> Iterator[Params]:
    """Load and validate params, then run the block; any failure becomes one line and exit 1.

    The block runs under the stage's lock (``pio.stage_lock``): a second run of the same
    stage on the same data folder stops at once, naming the folder and the holder's pid.
    Under torchrun only rank 0 takes it (the other ranks are the same run).
    ``STEAMGAN_DEBUG=1`` re-raises unexpected errors with their traceback.
    """
    with one_line_errors(stage):
        loaded = load_params(params, overrides or ())
        primary = os.environ.get("RANK", "0") == "0"
        with pio.stage_lock(stage) if primary else contextlib.nullcontext():
            yield loaded


@contextlib.contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    """Any failure in the block becomes ``steamgan COMMAND: error: …`` and a non-zero exit."""
    try:
        yield
    except StageError as exc:
        raise fail(command, worker_message(str(exc))) from None
    except KeyboardInterrupt:
        raise fail(command, "interrupted; run it again to resume", 130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("STEAMGAN_DEBUG"):
            raise
        first_line = (worker_message(str(exc)).splitlines() or [""])[0]
        raise fail(
            command, f"{exc.__class__.__name__}: {first_line} (STEAMGAN_DEBUG=1 for a traceback)"
        ) from None


def worker_message(text: str) -> str:
    """The original message of an error raised in a DataLoader worker: torch re-raises it
    as "Caught X in DataLoader worker process 0.", then the worker's whole traceback, whose
    last line is ``module.X: <message>`` (the line that names the file)."""
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]+: ", "", last, count=1)


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
            f"{missing.group(1)} missing (where to get it: {details}; docs/offline.md)"
            if missing
            else why
        )
        by_cause.setdefault(cause, []).append(what)
    for cause, whats in by_cause.items():
        say(f"{stage}: {', '.join(whats)}: {cause}")
