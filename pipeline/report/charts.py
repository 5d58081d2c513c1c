"""Charts as SVG files through matplotlib (its object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure

from pipeline.report.funnel import FunnelStep

BAR = "#4f7cac"
GONE = "#d9dee5"


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    # a fixed hash salt and no date keep the file identical for identical data (DVC caches it)
    fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    return out.getvalue()


def _rc() -> dict:
    return {"svg.hashsalt": "steamgan-report", "svg.fonttype": "none"}


def funnel_svg(steps: list[FunnelStep]) -> str:
    """Horizontal bars, one per stage that ran: what it kept, and in grey what it received."""
    import matplotlib

    ran = [s for s in steps if s.count is not None]
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(7.5, 0.45 * max(len(ran), 1) + 0.8))
        ax = fig.add_subplot()
        labels = [s.label for s in ran][::-1]
        counts = [s.count for s in ran][::-1]
        previous = [ran[i - 1].count if i else ran[i].count for i in range(len(ran))][::-1]
        ax.barh(labels, previous, color=GONE, height=0.6)
        ax.barh(labels, counts, color=BAR, height=0.6)
        top = max([*previous, *counts, 1])
        for y, (n, before) in enumerate(zip(counts, previous, strict=True)):
            share = f" ({n / before:.0%} of {before:,})" if before and before != n else ""
            ax.text(top * 0.01 + n, y, f"{n:,}{share}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.35)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlabel("images")
        return _svg(fig)


def curves_svg(title: str, curves: dict[str, pd.DataFrame]) -> str:
    """One panel of DVCLive curves (step on x), one line per metric."""
    import matplotlib

    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(5.2, 3.0))
        ax = fig.add_subplot()
        for name, df in curves.items():
            value = next(c for c in df.columns if c != "step")
            ax.plot(
                df["step"],
                df[value],
                label=name,
                linewidth=1.4,
                marker="." if len(df) < 30 else None,
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if len(curves) > 1:
            ax.legend(fontsize=8, frameon=False)
        return _svg(fig)
