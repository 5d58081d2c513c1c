"""DVCLive logging for training: curves ``dvc plots show`` renders, and sample grids."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def trim_metrics(live_dir: Path, step: int) -> None:
    """Drop curve rows past ``step``: a killed run logged steps its checkpoint does not hold,
    and the resumed run logs them again."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        column = header.split("\t").index("step") if "step" in header.split("\t") else None
        if column is None:
            continue
        kept = [row for row in rows if int(float(row.split("\t")[column])) <= step]
        tsv.write_text("\n".join([header, *kept]) + "\n")


class TrainLogger:
    """Metrics and images for one run; ``live_dir=None`` logs nothing (library use, tests)."""

    def __init__(self, live_dir: str | Path | None, resume: bool, step: int):
        self.live = None
        if live_dir is None:
            return
        from dvclive import Live

        if resume:
            trim_metrics(Path(live_dir), step)
        # dvcyaml=None: dvc.yaml declares the metrics and plots itself; save_dvc_exp=False:
        # experiments are DVC's business (`dvc exp run`), not the training loop's.
        self.live = Live(dir=str(live_dir), resume=resume, dvcyaml=None, save_dvc_exp=False)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def image(self, step: int, grid: Image.Image) -> None:
        if self.live is not None:
            self.live.log_image(f"samples/{step:07d}.png", grid)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
