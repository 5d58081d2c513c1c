"""evaluate: FID, KID, precision/recall, IS, PPL, the one-face rate and per-class FID of a
checkpoint's G_ema → data/evaluate/metrics.json (a DVC metric)."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from stages.common import ParamsOption, SetOption, run_stage, say, say_reasons, stage_app
from stages.reference import REFERENCE

OUT_DIR = pio.stage_dir("evaluate")
METRICS = OUT_DIR / "metrics.json"  # numbers only (null where not computed): a DVC metric
NOTES = OUT_DIR / "notes.json"  # why a metric is null, and the settings the numbers depend on
app = stage_app(__doc__, "evaluate", "reference")


SHOWN = ("fid", "kid", "precision", "recall", "inception_score", "ppl_z", "ppl_w",
         "one_face_rate", "one_face_rate_real", "fid_per_class_mean")  # fmt: skip


def summary_line(results: dict, notes: dict) -> str:
    shown = [
        f"{name} {results[name]:.4g}"
        for name in SHOWN
        if isinstance(results.get(name), float | int)
    ]
    missing = sorted(notes)
    line = ", ".join(shown) or "no metric"
    return line + (f"; null: {', '.join(missing)} (see {NOTES})" if missing else "")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Generate evaluate.num_images images and measure evaluate.metrics against the reference."""
    with run_stage("evaluate", params, overrides) as p:
        # imported here: torch and the networks take seconds, `steamgan --help` should not
        from pipeline.devices import use_threads
        from pipeline.metrics.evaluation import evaluate_generator
        from pipeline.metrics.networks import load_networks, pr_key
        from pipeline.metrics.reference import check_reference, load_reference, reference_key
        from pipeline.metrics.registry import networks_for

        cfg = p.evaluate
        use_threads(cfg.threads)
        reference = load_reference(REFERENCE)
        # the networks the asked metrics run, each loaded once
        nets = load_networks(cfg, networks_for(cfg.metrics))
        inception, vgg, vgg_note = nets.get("inception"), nets.get("vgg"), nets.note("vgg")
        pr = {"pr_features": None}
        if inception is not None:
            if "vgg" in networks_for(cfg.metrics):
                pr = pr_key(cfg, vgg)
            else:  # not measured: whichever network the reference used will do
                pr = {k: reference.key.get(k) for k in ("pr_features", "pr_sha256")}
            expected = reference_key(p.reference.data, p.reference, inception, cfg.resize, pr)
            check_reference(reference, expected, REFERENCE)
        results = evaluate_generator(cfg, reference, None, data=p.reference.data, networks=nets)
        notes = results.pop("notes", {})
        settings = {
            "checkpoint": cfg.checkpoint,
            "resize": cfg.resize,
            "extractor": inception.source.name if inception else None,
            "extractor_sha256": inception.source.sha256 if inception else None,
            "pr_features": pr["pr_features"] if "precision_recall" in cfg.metrics else None,
            "reference": str(REFERENCE),
        }
        warnings = results.pop("warnings", {})
        reasons = {f"{name} is null": why for name, why in notes.items()}
        if vgg_note and cfg.pr_features == "auto":
            settings["pr_features_note"] = vgg_note  # the fallback; a null has its own note
            reasons = {"precision/recall on Inception features": vgg_note, **reasons}
        pio.write_json(METRICS, results)
        pio.write_json(NOTES, {"notes": notes, "warnings": warnings, "settings": settings})
        say_reasons("evaluate", reasons, NOTES)
        say_reasons("evaluate", {f"warning: {k}": why for k, why in warnings.items()}, NOTES)
        say(f"evaluate: {summary_line(results, notes)} → {METRICS}")


if __name__ == "__main__":
    app()
