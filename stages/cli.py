"""``steamgan``: every stage as a subcommand (``steamgan download --help``)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages import (
    appids,
    compare,
    dataset,
    download,
    evaluate,
    faces,
    mirror,
    mix,
    reference,
    render,
    report,
    resize,
    train,
    translate,
    validate,
)
from stages.common import one_line_errors, params_help

STAGES = {
    "appids": appids,
    "download": download,
    "validate": validate,
    "faces": faces,
    "resize": resize,
    "dataset": dataset,
    "train": train,
    "mix": mix,
    "reference": reference,
    "evaluate": evaluate,
    "render": render,
    "translate": translate,
    "report": report,
}


def set_args(
    paths: list[Path] = typer.Argument(help="Partial params files; a later one wins a key."),
) -> None:
    """Print partial params files (params.offline.yaml, params.quick.yaml) as -S options, for
    `dvc exp run $(steamgan set-args params.offline.yaml params.quick.yaml)` or a stage."""
    from pipeline.params import overlay_overrides

    with one_line_errors("set-args"):
        merged: dict[str, str] = {}
        for path in paths:
            for item in overlay_overrides(path):
                key = item.split("=", 1)[0]
                merged.pop(key, None)  # the later file's value, at its place in that file
                merged[key] = item
        typer.echo(" ".join(f"-S {item}" for item in merged.values()))


def experiments(
    width: int = typer.Option(0, help="columns; 0: the terminal's, or 120 when piped"),
) -> None:
    """The runs of `dvc exp show` as one table that fits the width: each experiment, its
    headline metrics (FID, KID, precision, recall, one-face rate, images, steps) and the
    params that differ between the runs, best FID first."""
    import shutil

    from pipeline.report.experiments import exp_show, experiments_table

    with one_line_errors("experiments"):
        columns = width or shutil.get_terminal_size((120, 24)).columns
        typer.echo(experiments_table(exp_show(Path.cwd()), columns))


# Commands that are not stages: compare image sets outside the pipeline; a params overlay;
# the runs table; a local Steam.
COMMANDS = {
    "fid": compare.fid,
    "kid": compare.kid,
    "set-args": set_args,
    "experiments": experiments,
    "mirror": mirror.mirror,
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Curate Steam image datasets and train GANs on them. Each subcommand is a DVC stage.",
)
for name, module in STAGES.items():
    # Mount each stage app's one command under the stage's name, with its own help text.
    epilog = params_help(module.app.sections)  # the params section(s) the stage reads
    app.command(name=name, help=module.main.__doc__, epilog=epilog)(module.main)
for name, command in COMMANDS.items():
    app.command(name=name, help=command.__doc__)(command)


if __name__ == "__main__":
    app()
