"""download: one image kind per app from Steam's CDN → data/download/."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import io as pio
from pipeline.download import check_any_ok, download_images, plan_downloads, summarize
from pipeline.progress import progress_bar
from stages.appids import OUTPUT as APPIDS
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("download")
IMAGES = OUT_DIR / "images"
MANIFEST = pio.accepted_table("download")
SUMMARY = OUT_DIR / "summary.json"
app = stage_app(__doc__, "download")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Download download.kind for every app id; resumable, atomic, rate-limited."""
    with run_stage("download", params, overrides) as p:
        listed = pio.read_table(APPIDS, columns=("appid",))
        appids = listed["appid"].tolist()
        # each app's labels go into the manifest (an app list older than labels has none)
        labels = dict(zip(appids, listed["labels"], strict=True)) if "labels" in listed else None
        plan = plan_downloads(appids, p.download, MANIFEST)
        counts: Counter[str] = Counter()
        with progress_bar(plan.total, f"download {p.download.kind.value}") as advance:
            advance(len(plan.done), status=f"{len(plan.done):,} done earlier")

            def on_result(record) -> None:
                counts[record.status] += 1
                advance(1, status=" ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))

            manifest = download_images(
                plan, p.download, IMAGES, MANIFEST, on_result=on_result, labels=labels
            )
        summary = summarize(manifest)
        pio.write_json(SUMMARY, summary)
        say("download: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
        check_any_ok(manifest)


if __name__ == "__main__":
    app()
