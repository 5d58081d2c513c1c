"""DVCLive logging for training: curves ``dvc plots show`` renders, and sample grids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn

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


def layer_group(name: str) -> str:
    """A parameter's layer group for gradient-flow curves: its path up to the first block
    index (``synthesis_net.blocks.3``, ``mapper.layers.0``), else its first two parts."""
    parts = name.split(".")[:-1] or name.split(".")
    for i, part in enumerate(parts[:3]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


class GradientFlow:
    """Mean |gradient| per layer group of a phase's parameters (``grad/<network>/<layer>``,
    unscaled), as device tensors read only at log time: a dying layer shows as a line
    falling to zero, an exploding one rising. ``phase_params(phase)``: the parameters that
    phase's optimizers update."""

    def __init__(
        self,
        networks: dict[str, nn.Module],
        phase_params: Callable[[str], list[nn.Parameter]],
    ):
        self.networks, self.phase_params = networks, phase_params
        self._groups: dict[str, list[tuple[str, list[nn.Parameter]]]] = {}

    def groups(self, phase: str) -> list[tuple[str, list[nn.Parameter]]]:
        """The phase's parameters by layer group, in the order the networks define them
        (input to output)."""
        if phase not in self._groups:
            ours = {id(param) for param in self.phase_params(phase)}
            groups: dict[str, list[nn.Parameter]] = {}
            for network, module in self.networks.items():
                for name, param in module.named_parameters():
                    if id(param) in ours:
                        groups.setdefault(f"grad/{network}/{layer_group(name)}", []).append(param)
            self._groups[phase] = list(groups.items())
        return self._groups[phase]

    def __call__(self, phase: str, scaler) -> dict[str, torch.Tensor]:
        unscale = 1 / scaler.get_scale() if scaler.is_enabled() else 1.0
        flow = {}
        for key, params in self.groups(phase):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                total = torch.stack([g.detach().float().abs().sum() for g in grads]).sum()
                flow[key] = total * unscale / sum(g.numel() for g in grads)
        return flow
