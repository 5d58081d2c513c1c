"""DVCLive logging for training: curves ``dvc plots show`` renders, and sample grids."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

GRAD_FLOW = Path("plots/custom/grad_flow.tsv")  # under the DVCLive folder; see log()
GRAD_FLOW_COLUMNS = ("step", "network", "layer", "grad")


def trim_metrics(live_dir: Path, step: int) -> None:
    """Drop curve rows past ``step``: a killed run logged steps its checkpoint does not hold,
    and the resumed run logs them again."""
    tables = [*(live_dir / "plots" / "metrics").rglob("*.tsv"), live_dir / GRAD_FLOW]
    for tsv in (t for t in tables if t.is_file()):
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
        self.grad_flow = Path(live_dir) / GRAD_FLOW
        if not resume and self.grad_flow.exists():
            self.grad_flow.unlink()  # a new run's curves start empty, as DVCLive's own
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
        flow = []
        for name, value in values.items():
            if name.startswith("grad/"):
                network, layer = name.removeprefix("grad/").split("/", 1)
                flow.append((step, network, layer, f"{value:.6g}"))
            else:
                self.live.log_metric(name, value)
        self.live.next_step()
        if flow:
            self._append_flow(flow)

    def _append_flow(self, rows: list[tuple]) -> None:
        """Mean |grad| per layer group, long format (one row per layer and step), appended:
        dvc.yaml plots it with .dvc/plots/grad_flow.json, one line per layer, a panel per
        network. Not one DVCLive metric per layer: dozens of curves would drown the rest."""
        self.grad_flow.parent.mkdir(parents=True, exist_ok=True)
        new = not self.grad_flow.exists()
        with self.grad_flow.open("a") as f:
            if new:
                f.write("\t".join(GRAD_FLOW_COLUMNS) + "\n")
            f.writelines("\t".join(map(str, row)) + "\n" for row in rows)

    def image(self, step: int, grid: Image.Image) -> None:
        if self.live is not None:
            self.live.log_image(f"samples/{step:07d}.png", grid)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
