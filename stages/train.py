"""train: a GAN on the packaged dataset → data/train/checkpoints, dvclive/ curves and grids.

Multi-GPU: ``torchrun --nproc_per_node N -m stages.train``.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import io as pio
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("train")
RUN_INFO = OUT_DIR / "run.json"  # what the run is (model, sizes, device, precision, ...)
LIVE_DIR = Path("dvclive")
app = stage_app(__doc__, "train")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Train train.model; resumes from data/train/checkpoints after an interruption."""
    with run_stage("train", params, overrides) as p:
        from pipeline.devices import busy_machine_warning, use_training_threads
        from pipeline.training.loop import (  # torch: only when training
            Trainer,
            run_summary,
            slow_cpu_warning,
        )

        cfg = p.train
        threads = use_training_threads(cfg.threads)
        trainer = Trainer(cfg, OUT_DIR, LIVE_DIR)
        if not trainer.procs.is_main:
            trainer.run()
            return
        if cfg.threads == "auto" and trainer.device.type == "cpu":
            warning = busy_machine_warning(threads)
            if warning:
                say(f"train: {warning}")
        for notice in (trainer.dataset_notice, trainer.notice):
            if notice:
                say(f"train: {notice}")
        info = trainer.run_info()
        pio.write_json(RUN_INFO, info)
        say(f"train: {run_summary(info)}")
        if cfg.eval_every:
            from pipeline.metrics.samples import sample_warning

            count = min(cfg.eval_images, len(trainer.dataset))
            warning = sample_warning("fid", count, "images (train.eval_images, dataset size)")
            if warning:
                say(f"train: warning: the cheap FID curve uses {warning}")
        if trainer.resumed:
            say(f"train: resuming {trainer.checkpoint_path} at step {trainer.state.step:,}")
        with progress_bar(cfg.steps, f"train {cfg.model} {cfg.image_size}px") as advance:
            shown = {"step": 0}
            first = {"step": trainer.state.step}  # timed once, to warn about a slow CPU run

            def progress(step: int, logs: dict) -> None:
                if first and step == first["step"]:
                    first["clock"] = time.perf_counter()
                elif first:
                    per_step = (time.perf_counter() - first["clock"]) / (step - first["step"])
                    warning = slow_cpu_warning(trainer.device.type, cfg.steps - step, per_step)
                    if warning:
                        say(f"train: {warning}")
                    first.clear()
                status = f"kimg {trainer.state.nimg / 1000:,.1f}"
                if "speed/images_per_s" in logs:
                    status += f" · {logs['speed/images_per_s']:,.0f} img/s"
                d_loss = sum(v for k, v in logs.items() if k.startswith("loss/D"))
                if "loss/G" in logs:
                    status += f" · loss G {logs['loss/G']:.3f} D {d_loss:.3f}"
                advance(step - shown["step"], status=status)
                shown["step"] = step

            trainer.run(progress=progress)
        state = trainer.state
        note = (
            f" (lr lowered {state.recoveries}x after non-finite steps)" if state.recoveries else ""
        )
        say(
            f"train: {state.step:,} steps, {state.nimg / 1000:,.1f} kimg → "
            f"{trainer.checkpoint_path}{note}"
        )


if __name__ == "__main__":
    app()
