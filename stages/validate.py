"""validate: reject broken, mis-sized, blank, vignetted and near-duplicate banners."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from pipeline.parallel import parallel_map
from pipeline.progress import progress_bar
from pipeline.validate import inspect_image, split_verdicts, summarize, tasks_from_manifest
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("validate")
CONVERTED = OUT_DIR / "images"
CONVERTED_LIST = "converted.txt"  # the images converted to RGB, one name a line
ACCEPTED = pio.accepted_table("validate")
REJECTED = OUT_DIR / "rejected.parquet"
SUMMARY = OUT_DIR / "summary.json"
app = stage_app(__doc__, "validate")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Check every downloaded image; write accepted and rejected tables (with reasons)."""
    with run_stage("validate", params, overrides) as p:
        cfg = p.validate_
        manifest = pio.read_table(pio.upstream_table("validate"), columns=("appid", "path"))
        CONVERTED.mkdir(parents=True, exist_ok=True)
        pio.remove_partials(CONVERTED)
        tasks = tasks_from_manifest(manifest, cfg, CONVERTED)
        verdicts = []
        with progress_bar(len(tasks), "validate") as advance:
            for verdict in parallel_map(inspect_image, tasks, cfg.workers):
                verdicts.append(verdict)
                advance()
        accepted, rejected = split_verdicts(
            verdicts, cfg.dedup_max_distance, cfg.dedup_confirm_distance
        )
        accepted = pio.carry_trace(accepted, manifest)  # url, sha256, labels
        pio.write_table(ACCEPTED, accepted)
        pio.write_table(REJECTED, rejected)
        converted = {Path(x).name for x in accepted["path"] if Path(x).parent == CONVERTED}
        pio.prune_dir(CONVERTED, {*converted, CONVERTED_LIST})
        # never an empty folder: DVC warns "is empty" and "No file hash info found" for one
        # on every status and checkout, a warning that asks for nothing
        listing = "".join(f"{name}\n" for name in sorted(converted))
        pio.write_bytes(CONVERTED / CONVERTED_LIST, listing.encode())
        summary = summarize(accepted, rejected)
        pio.write_json(SUMMARY, summary)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items() if v)
        say(
            f"validate: {summary['accepted']:,} accepted, {summary['rejected']:,} rejected"
            + (f" ({reasons})" if reasons else "")
        )


if __name__ == "__main__":
    app()
