"""report: the whole run on one page → data/report/index.html (open it in a browser)."""

from __future__ import annotations

from pathlib import Path

from pipeline.report import build_report
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

app = stage_app(__doc__)


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Build data/report/ (funnel, examples, traceability, training, evaluation, experiments)."""
    with run_stage("report", params, overrides) as p:
        page = build_report(p)
        say(f"report: {page} (open it in a browser)")


if __name__ == "__main__":
    app()
