"""translate: a StarGAN v2 checkpoint turns pictures, folders or frame sequences into each
of its domains → data/translate/.

Latent-guided (translate.styles random styles per domain) or reference-guided
(translate.reference); frame sequences keep one style (or move it slowly) and get an MP4.
Resumable: images already written are not redone. Another model's checkpoint is skipped
with a line (the stage runs in every ``dvc repro``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import io as pio
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, require_checkpoint, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("translate")
app = stage_app(__doc__, "translate")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Translate translate.source into translate.checkpoint's domains, into data/translate/."""
    with run_stage("translate", params, overrides) as p:
        # torch: imported only when translating
        from pipeline.devices import pick_device
        from pipeline.models import models_able
        from pipeline.models.base import Capability
        from pipeline.training.checkpoint import load_generator
        from pipeline.translate import SUMMARY, translate

        cfg = p.translate
        require_checkpoint("translate.checkpoint", cfg.checkpoint)
        device = pick_device(cfg.device)
        trained = load_generator(cfg.checkpoint, device)
        if not trained.can(Capability.TRANSLATION):
            able = models_able(Capability.TRANSLATION)
            reason = f"{trained.model} does not translate images ({able} does)"
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            pio.write_json(OUT_DIR / SUMMARY, {"skipped": reason, "checkpoint": cfg.checkpoint})
            say(f"translate: nothing to do: {reason}")
            return
        for folder, _, _ in os.walk(OUT_DIR):  # temporaries of a killed run
            pio.remove_partials(folder)
        with progress_bar(None, f"translate {Path(cfg.source).name}") as advance:
            summary = translate(trained, cfg, OUT_DIR, device, advance=advance)
        say(
            f"translate: {summary['images']} image(s) x {len(summary['styles'])} style(s) "
            f"into {', '.join(summary['domains'])}: {summary['written']} written, "
            f"{summary['already_there']} already there → {OUT_DIR}/"
            + (f"; {len(summary['videos'])} MP4(s)" if summary["videos"] else "")
        )
        if summary["refused"]:
            where, why = next(iter(summary["refused"].items()))
            say(
                f"translate: {len(summary['refused'])} image(s) refused, their names are not "
                f"safe paths (e.g. {where}: {why}); listed in {OUT_DIR / SUMMARY}"
            )


if __name__ == "__main__":
    app()
