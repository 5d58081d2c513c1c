"""reference: Inception (and VGG16) features of the real dataset, its one-face rate
→ data/reference/."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from stages.common import ParamsOption, SetOption, run_stage, say, say_reasons, stage_app

OUT_DIR = pio.stage_dir("reference")
REFERENCE = OUT_DIR / "reference.npz"
SUMMARY = OUT_DIR / "summary.json"  # counts and the real one-face rate: a DVC metric
DETAILS = OUT_DIR / "reference.json"  # the key (dataset, network, resize) and detector config
app = stage_app(__doc__, "reference", "evaluate")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Features and statistics of reference.data with evaluate's extractor and resize."""
    with run_stage("reference", params, overrides) as p:
        # imported here: torch and the networks take seconds, `steamgan --help` should not
        from pipeline.devices import use_threads
        from pipeline.metrics.networks import load_networks
        from pipeline.metrics.reference import compute_reference, save_reference
        from pipeline.training.data import resolve_dataset

        resolve_dataset(p.reference.data, "reference.data")  # before seconds of model loading
        cfg = p.evaluate
        # every core for Inception, not shared with the decode workers, which mostly wait for
        # it: 240 flowers on 2 cores took 47.2 s on 1 thread, 27.1 s on 2 (docs/stages.md)
        threads = use_threads(cfg.threads)
        # every network a reference serves: Inception, VGG16 (precision/recall), RetinaFace
        nets = load_networks(cfg, ("inception", "vgg", "detector"))
        inception, vgg, vgg_note = nets.get("inception"), nets.get("vgg"), nets.note("vgg")
        reference = compute_reference(
            p.reference, cfg, inception, nets.get("detector"), nets.note("detector"), vgg, vgg_note
        )
        save_reference(REFERENCE, reference)
        numbers = ("num_images", "dataset_images", "one_face_rate")
        pio.write_json(SUMMARY, {name: reference.summary[name] for name in numbers})
        details = {k: v for k, v in reference.summary.items() if k not in numbers}
        pio.write_json(DETAILS, {"key": reference.key, **details})
        why = reference.summary.get("notes", {})
        reasons = {"precision/recall on Inception features": vgg_note} if vgg_note else {}
        if "one_face_rate" in why:
            reasons["one-face rate null"] = why["one_face_rate"]
        say_reasons("reference", reasons, DETAILS)
        rate = reference.summary["one_face_rate"]
        faces = f"one-face rate {rate:.3f}" if rate is not None else "one-face rate null"
        classes = f", {len(reference.classes)} classes" if reference.labels is not None else ""
        say(
            f"reference: {reference.summary['num_images']:,} images of {p.reference.data}{classes} "
            f"({inception.source.name}, resize {cfg.resize}; precision/recall on "
            f"{reference.key['pr_features'] or 'nothing'}); {faces}; {threads} CPU thread(s) "
            f"→ {REFERENCE}"
        )


if __name__ == "__main__":
    app()
