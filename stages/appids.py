"""appids: which Steam apps to fetch → data/appids/appids.parquet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import io as pio
from pipeline.appids import collect_appids
from pipeline.http import make_session
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUTPUT = pio.stage_dir("appids") / "appids.parquet"
app = stage_app(__doc__, "appids")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """List app ids from Steam's app list, SteamSpy, or a file (appids.source)."""
    with run_stage("appids", params, overrides) as p:
        cfg = p.appids
        session = make_session(cfg.retries, pool_size=1)
        with progress_bar(None, f"appids ({cfg.source})") as advance:
            table = collect_appids(cfg, session, on_page=lambda page, n: advance(status=f"{n:,}"))
        pio.write_table(OUTPUT, table)
        counts = Counter(name for cell in table["labels"] for name in pio.split_labels(cell))
        labelled = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        say(
            f"appids: {len(table):,} apps from {cfg.source} → {OUTPUT}"
            + (f" ({labelled})" if labelled else "")
        )


if __name__ == "__main__":
    app()
