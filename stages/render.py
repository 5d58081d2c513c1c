"""render: pictures and videos from a trained generator → data/render/.

Grids of fakes and reals, the progress strip over snapshots, Z (and W) interpolation videos;
for style-based models also truncation, style mixing, GANSpace/SeFa edits and projections
of real images. ``render.json`` says what was drawn and what this model does not support.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.progress import progress_bar
from stages.common import (
    ParamsOption,
    SetOption,
    require_checkpoint,
    run_stage,
    say,
    say_reasons,
    stage_app,
)
from stages.mix import MIXED

OUT_DIR = pio.stage_dir("render")
app = stage_app(__doc__, "render")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Draw every render the model of render.checkpoint (or of the mix: render.mix) supports."""
    with run_stage("render", params, overrides) as p:
        # torch: imported only when rendering
        from pipeline.devices import pick_device
        from pipeline.render.run import left_out, metrics, render, work_units
        from pipeline.render.translation import translates
        from pipeline.training.checkpoint import load_generator

        cfg = p.render
        checkpoint = MIXED if cfg.mix else Path(cfg.checkpoint)
        if cfg.mix and not checkpoint.is_file():
            raise StageError(
                f"render.mix: {checkpoint} not found; set mix.last (e.g. -S mix.last=4) or "
                "mix.snapshots and run the mix stage (dvc repro mix), or set render.mix false"
            )
        if not cfg.mix:
            require_checkpoint("render.checkpoint", checkpoint)
        device = pick_device(cfg.device)

        def projection_features():
            """The FID Inception trunk (differentiable) for projection's fallback loss."""
            from pipeline.render.projection import fid_inception_features

            def missing(why: str) -> None:
                say(f"render: no Inception features for projection ({why})")

            return fid_inception_features(cfg.project, device, missing)

        cfg = cfg.for_device(device.type)  # project.steps: auto
        trained = load_generator(checkpoint, device)
        skipped = left_out(cfg, trained, trained.model)
        for reason in dict.fromkeys(skipped.values()):  # said plainly, once per reason
            names = ", ".join(name for name, why in skipped.items() if why == reason)
            say(f"render: {reason}: no {names}")
        with (
            pio.atomic_dir(OUT_DIR) as tmp,
            progress_bar(
                work_units(cfg, skipped, bool(trained.num_classes), translates(trained)),
                f"render {trained.model}",
            ) as advance,
        ):
            summary = render(
                trained, cfg, tmp, device, advance=advance, load_features=projection_features
            )
            pio.write_json(tmp / "render.json", summary)
            pio.write_json(tmp / "metrics.json", metrics(summary))
        drawn = ", ".join(summary["rendered"])
        say(f"render: {drawn} from {checkpoint} ({trained.kimg:,g} kimg) → {OUT_DIR}/")
        projected = summary["rendered"].get("projection")
        if projected:
            say(f"render: projection loss {projected['loss']}")
            if projected["loss_note"]:  # a missing weights file: one short line, fix in the json
                reasons = {f"projection on {projected['loss']}": projected["loss_note"]}
                say_reasons("render", reasons, OUT_DIR / "render.json")
        for name, reason in summary["unsupported"].items():
            if name not in skipped:
                say(f"render: no {name}: {reason}")


if __name__ == "__main__":
    app()
