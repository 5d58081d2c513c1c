"""mix: the average of a run's snapshots (stochastic weight averaging) → data/mix/mixed.pt.

Every network the inputs share is averaged (G_ema, and G, D and the other averaged modules
when every input holds them); the result samples like a snapshot (render, evaluate) and can
start a new run (train.resume_from), but cannot continue one: it has no optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import io as pio
from pipeline.errors import StageError
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("mix")
MIXED = OUT_DIR / "mixed.pt"  # what render.mix draws
SUMMARY = OUT_DIR / "mix.json"  # what was mixed; with the mix off, a fixed "off" record
TRAIN_DIR = pio.stage_dir("train")
SNAPSHOTS = TRAIN_DIR / "snapshots"
CHECKPOINT = TRAIN_DIR / "checkpoints" / "latest.pt"  # the run whose snapshots mix.last takes
# Written when nothing is mixed: always the same bytes, so that the stages depending on
# data/mix (render) see no change and DVC does not run them again.
OFF = {"mixed": False, "reason": "mix.last is 0 and mix.snapshots is empty"}
app = stage_app(__doc__, "mix")

SnapshotsArgument = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Snapshots or checkpoints of one run (paths or globs); replace mix.snapshots.",
        show_default=False,
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write the mixed checkpoint here (only it) instead of data/mix/ "
        "(mixed.pt and mix.json, the DVC output).",
        show_default=False,
    ),
]

ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Replace the file --out names if it exists."),
]


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that would replace what is not a mix's to replace: anything in
    the training run's folder (its checkpoint, snapshots and ``current/`` copies: a mix
    there was taken for the run's checkpoint and its last copy re-linked to it), or an
    existing file unless ``force``. Links are followed: a link into data/train/ is inside."""
    if out.resolve().is_relative_to(TRAIN_DIR.resolve()):
        raise StageError(
            f"--out: {out} is inside {TRAIN_DIR}/, the training run's own folder (its "
            "checkpoint and snapshots); write the mix elsewhere (e.g. mixes/mix.pt)"
        )
    if out.is_dir():
        raise StageError(f"--out: {out} is a folder; give the path of a file (e.g. {out}/mix.pt)")
    if (out.exists() or out.is_symlink()) and not force:
        raise StageError(f"--out: {out} exists; not replacing it (give another path, or --force)")


@app.command()
def main(
    snapshots: SnapshotsArgument = None,
    out: OutOption = None,
    force: ForceOption = False,
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Average snapshots of one run (SNAPSHOT..., mix.snapshots, or the run's last mix.last)."""
    with run_stage("mix", params, overrides) as p:
        cfg = p.mix
        patterns = [str(s) for s in snapshots] if snapshots else list(cfg.snapshots)
        if not patterns and not cfg.last:
            if out is not None:
                raise StageError(
                    "nothing to mix: give SNAPSHOT paths, or set mix.last or mix.snapshots"
                )
            with pio.atomic_dir(OUT_DIR) as tmp:
                pio.write_json(tmp / SUMMARY.name, OFF)
            say(f"mix: off ({OFF['reason']}); wrote {SUMMARY} only")
            return

        # torch: imported only when mixing
        from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
        from pipeline.training.mix import expand, mix_checkpoints, pick_snapshots

        if patterns:
            sources = pick_snapshots(expand(patterns), cfg.last)
        else:
            if not CHECKPOINT.is_file():
                raise StageError(
                    f"mix.last: {CHECKPOINT} not found (it names the run whose snapshots "
                    "to mix); run the train stage, or list the files in mix.snapshots"
                )
            run_hash = load_checkpoint(CHECKPOINT).get("params_hash")
            files = sorted(SNAPSHOTS.glob("step-*.pt"), reverse=True) if SNAPSHOTS.is_dir() else []
            sources = pick_snapshots(files, cfg.last, run_hash, newest_first=True)
            if not sources:
                raise StageError(
                    f"mix.last: no snapshot of the run of {CHECKPOINT} in {SNAPSHOTS}; "
                    "set train.snapshot_every and train, or list the files in mix.snapshots"
                )
        target = out if out is not None else MIXED
        inputs = {Path(path).resolve() for path, _ in sources}
        if target.resolve() in inputs:
            raise StageError(f"--out: {target} is one of the inputs; write the mix elsewhere")
        if out is not None:
            check_out(out, force)
        mixed, left_out = mix_checkpoints(sources)
        summary = describe(mixed, left_out, target)
        if out is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(target, mixed)
        else:
            with pio.atomic_dir(OUT_DIR) as tmp:
                save_checkpoint(tmp / MIXED.name, mixed)
                pio.write_json(tmp / SUMMARY.name, summary)
        steps = [source["step"] for source in mixed["mixed_from"]]
        say(
            f"mix: {', '.join(summary['networks'])} averaged over {len(steps)} snapshot(s) "
            f"of run {mixed['params_hash']} (steps {steps[0]}…{steps[-1]}) → {target}"
        )
        if left_out:
            say(f"mix: {', '.join(left_out)} left out: not in every input")


def describe(mixed: dict, left_out: list[str], target: Path) -> dict:
    """mix.json: what the mix holds and what it was made of."""
    from pipeline.training.mix import networks

    names = list(networks(mixed))
    return {
        "mixed": True,
        "out": str(target),
        "model": mixed["model"],
        "params_hash": mixed["params_hash"],
        "kimg": mixed.get("kimg"),
        "networks": names,
        "left_out": left_out,
        "mixed_from": mixed["mixed_from"],
    }


if __name__ == "__main__":
    app()
