"""faces: keep banners with exactly faces.require_exactly faces (S3FD, RetinaFace, dlib)."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("faces")
ACCEPTED = pio.accepted_table("faces")
REJECTED = OUT_DIR / "rejected.parquet"
DETECTIONS = OUT_DIR / "detections.parquet"
SUMMARY = OUT_DIR / "summary.json"
CACHE = OUT_DIR / "cache" / "results.sqlite"  # not a DVC output: see dvc.yaml
app = stage_app(__doc__, "faces")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Count faces per detector and resolution; keep the images the rule accepts."""
    with run_stage("faces", params, overrides) as p:
        # imported here: torch and the detectors take seconds, `steamgan --help` should not
        from pipeline.devices import use_threads
        from pipeline.faces.cache import ResultCache
        from pipeline.faces.curate import (
            describe_thresholds,
            detect_faces,
            load_detectors,
            split_tables,
            summarize,
        )

        cfg = p.faces
        threads = use_threads(cfg.threads)
        table = pio.read_table(pio.upstream_table("faces"))
        detectors = load_detectors(cfg)
        for detector in detectors.values():
            say(f"faces: {describe_thresholds(detector)}")
        label = "+".join(cfg.detectors) + " @ " + ", ".join(map(str, cfg.resolutions))
        with ResultCache(CACHE) as cache, progress_bar(len(table), f"faces {label}") as advance:
            run = detect_faces(table, cfg, detectors, cache, lambda n, s: advance(n, status=s))
        detections, accepted, rejected = split_tables(table, run, cfg)
        pio.write_table(DETECTIONS, detections)
        pio.write_table(ACCEPTED, accepted)
        pio.write_table(REJECTED, rejected)
        summary = summarize(detections, accepted, rejected, cfg)
        pio.write_json(SUMMARY, summary)
        alone = ", ".join(f"{n} alone {d['accepted']:,}" for n, d in summary["detectors"].items())
        say(
            f"faces: {summary['accepted']:,} of {summary['input']:,} kept "
            f"({cfg.combine} of {alone}); {run.computed:,} detections computed, "
            f"{run.cached:,} from the cache; {threads} CPU thread(s)"
        )


if __name__ == "__main__":
    app()
