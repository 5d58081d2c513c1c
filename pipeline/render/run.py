"""Everything the render stage draws, for whatever model a checkpoint holds.

Every generator gets the grids (fakes, reals, progress over snapshots) and the Z-space
interpolation; truncation, style mixing, W interpolation, latent directions and projection
need a mapping network (W space) and are listed as unsupported for other models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import io as pio
from pipeline.models.base import Capability, capabilities_of
from pipeline.progress import Advance, as_advance
from pipeline.render import directions as dirs
from pipeline.render import grids, interpolation, mixing, projection, translation
from pipeline.render.params import RenderParams
from pipeline.render.synthesis import Synth, WStats
from pipeline.render.video import write_videos
from pipeline.training.checkpoint import TrainedGenerator
from pipeline.training.sampling import image_grid

IMAGES, VIDEOS = "images", "videos"
W_SAMPLES_SEED = 0  # the z drawn for W's statistics (GANSpace, edit and projection scales)
ANY, STYLED = "any", "styled"
# Every render, in order, and which generators can draw it.
RENDERS = {
    "fakes": ANY,
    "reals": ANY,
    "progress": ANY,
    "interpolation_z": ANY,
    "truncation": STYLED,
    "mixing": STYLED,
    "interpolation_w": STYLED,
    "ganspace": STYLED,
    "sefa": STYLED,
    "projection": STYLED,
}
# StarGAN v2 draws these (and the reals) instead: real images translated into its domains
TRANSLATIONS = ("translation", "translation_reference")


def unsupported(source, model: str) -> dict[str, str]:
    """Renders this generator (a ``TrainedGenerator``, or a bare G) cannot draw, each with
    the reason, from the capabilities its model declares."""
    can = capabilities_of(source)
    if Capability.TRANSLATION in can:  # draws from real images, not from z
        why = f"{model} translates real images (its translation grids; the translate stage)"
        return {name: why for name in RENDERS if name != "reals"}
    reasons = {}
    if Capability.W_SPACE not in can:
        for name, needs in RENDERS.items():
            if needs == STYLED:
                reasons[name] = f"{model} has no mapping network (W space)"
    elif Capability.STYLE_WEIGHTS not in can:
        reasons["sefa"] = f"{model} does not expose its style layers' weights"
    return reasons


NOT_ASKED = "not in render.parts"


def left_out(p: RenderParams, source, model: str) -> dict[str, str]:
    """The renders that will not be drawn, each with why: the model (``source``: a
    ``TrainedGenerator`` or a bare G) cannot, or ``render.parts`` does not list it."""
    skipped = unsupported(source, model)
    for name in (*RENDERS, "class_interpolation", *TRANSLATIONS):
        if name not in skipped and not p.wants(name):
            skipped[name] = NOT_ASKED
    return skipped


def work_units(
    p: RenderParams, skipped: dict[str, str], conditional: bool = False, translator: bool = False
) -> int:
    """The progress bar's total: one per render, plus one per projection step (and the
    class interpolation of a conditional G, the only render it alone has; StarGAN v2's
    translation grids). ``p.project.steps`` must be resolved (``for_device``)."""
    if translator:
        return sum(1 for name in ("reals", *TRANSLATIONS) if name not in skipped)
    units = sum(1 for name in RENDERS if name not in skipped)
    units += int(conditional and "class_interpolation" not in skipped)
    if "projection" not in skipped and p.project.targets:
        units += p.project.steps
    return units


@dataclass
class Outputs:
    root: Path

    def image(self, name: str) -> Path:
        return self.root / IMAGES / name

    def video(self, name: str) -> Path:
        return self.root / VIDEOS / name

    def save(self, picture, name: str) -> str:
        path = self.image(name)
        with pio.atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        return path.relative_to(self.root).as_posix()

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def psi_name(psi: float) -> str:
    return f"psi{psi:g}"


def render(
    trained: TrainedGenerator,
    p: RenderParams,
    out_dir: str | Path,
    device: torch.device,
    load_features: Callable[[], projection.FeatureNetwork | None] | None = None,
    advance: Callable[..., None] = Advance(),
) -> dict[str, Any]:
    """Draw every render the model supports into ``out_dir`` (images/, videos/); return the
    summary written to ``render.json`` (what was drawn, from what, and what was skipped)."""
    out = Outputs(Path(out_dir))
    G = trained.G
    advance = as_advance(advance)
    p = p.for_device(device.type)
    synth_options = dict(device=device, batch=p.batch_size, noise_mode=p.noise_mode)
    skipped = left_out(p, trained, trained.model)
    draw = lambda name: name not in skipped  # noqa: E731
    rows, cols = p.grid
    done: dict[str, dict[str, Any]] = {}
    psis = list(p.truncation)

    def finish(name: str, **record: Any) -> None:
        done[name] = record
        advance(status=name)

    if trained.can(Capability.TRANSLATION):
        return render_translations(trained, p, out, device, finish, skipped, done)
    synth = Synth(G, **synth_options, sample=trained.sample)

    def interpolation_video(space: str, frames) -> None:
        """A loop through ``p.seeds`` in Z or W, as GIF (a plot) and MP4."""
        gif, mp4 = out.image(f"interpolation-{space}.gif"), out.video(f"interpolation-{space}.mp4")
        count = write_videos(frames, p.fps, gif, mp4)
        files = [out.relative(gif), f"{VIDEOS}/interpolation-{space}.mp4"]
        finish(f"interpolation_{space}", files=files, seeds=p.seeds, frames=count, fps=p.fps)

    if draw("fakes"):
        finish(
            "fakes",
            files=[out.save(grids.fakes_grid(synth, rows, cols), "fakes.png")],
            seeds=grids.grid_seeds(rows, cols),
        )
    if draw("reals"):
        finish(
            "reals",
            files=[out.save(grids.reals_grid(p.data, rows, cols, trained.image_size), "reals.png")],
            data=p.data,
        )

    if not draw("progress"):
        pass
    elif p.snapshots is None:
        skipped["progress"] = "render.snapshots is null"
        advance()
    else:
        strip, kimgs, foreign = grids.progress_strip(
            trained, p.snapshots, p.seeds, p.progress_columns, synth_options
        )
        if strip is None:
            skipped["progress"] = f"no snapshots of this run in {p.snapshots}"
            advance()
        else:
            finish(
                "progress",
                files=[out.save(strip, "progress.png")],
                kimg=kimgs,
                rows=p.seeds,
                other_runs_left_out=foreign,  # snapshots another run's params wrote
            )

    if draw("interpolation_z"):
        interpolation_video("z", interpolation.z_frames(synth, p.seeds, p.frames))

    if not trained.can(Capability.W_SPACE):
        return summary(trained, p, done, skipped)

    if synth.num_classes and draw("class_interpolation"):
        steps = p.class_steps
        table = grids.class_interpolation(synth, p.seeds, steps)
        columns = (synth.num_classes - 1) * steps + 1
        finish(
            "class_interpolation",
            files=[out.save(image_grid(table, len(p.seeds), columns), "class-interpolation.png")],
            rows=p.seeds,
            classes=trained.classes,
            steps=steps,
        )

    seeds_rows = len(p.seeds)
    if draw("truncation"):
        table = grids.truncation_grid(synth, p.seeds, psis, p.truncation_cutoff)
        finish(
            "truncation",
            files=[
                out.save(image_grid(table, seeds_rows, 1 + len(psis)), "truncation.png"),
                out.save(image_grid(synth.average_image(), 1, 1), "average.png"),
            ],
            rows=p.seeds,
            columns=[1.0, *psis],
        )

    m = p.mixing
    if draw("mixing"):
        files = []
        for psi in [1.0, *psis]:
            grid = mixing.mixing_grid(synth, m.rows, m.cols, m.crossover, psi, p.truncation_cutoff)
            name = "mixing.png" if psi == 1.0 else f"mixing-{psi_name(psi)}.png"
            files.append(out.save(image_grid(grid, 1 + len(m.rows), 1 + len(m.cols)), name))
        finish("mixing", files=files, rows=m.rows, cols=m.cols, crossover=m.crossover)

    if draw("interpolation_w"):
        interpolation_video("w", interpolation.w_frames(synth, p.seeds, p.frames))

    if not any(draw(name) for name in ("ganspace", "sefa", "projection")):
        return summary(trained, p, done, skipped)
    stats = synth.w_stats(p.w_samples, W_SAMPLES_SEED)
    d = p.directions
    found = {}
    if draw("ganspace"):
        found["ganspace"] = dirs.ganspace(stats, d.count)
    if draw("sefa"):
        found["sefa"] = dirs.sefa(synth, stats, d.count, d.layers)
    for method, directions in found.items():
        edits = dirs.edit_rows(synth, d.seed, directions, d.steps, d.strength, d.layers)
        grid = image_grid(edits, len(directions.vectors), d.steps)
        finish(
            method,
            files=[out.save(grid, f"{method}.png")],
            seed=d.seed,
            strength=d.strength,
            scores=directions.scores,
            sigmas=directions.sigmas,
        )

    if not draw("projection"):
        pass
    elif p.project.targets:
        record = project_reals(synth, trained, p, stats, out, load_features, advance)
        finish("projection", **record)
    else:
        skipped["projection"] = "render.project.targets is 0"
        advance()
    return summary(trained, p, done, skipped)


def render_translations(trained, p, out, device, finish, skipped, done) -> dict[str, Any]:
    """StarGAN v2: the reals grid, then ``render.grid`` rows of real images translated into
    every domain, latent-guided (the first two ``render.seeds`` as styles) and
    reference-guided (the first image of each domain in ``render.data`` as reference)."""
    rows, cols = p.grid
    if p.wants("reals"):
        finish(
            "reals",
            files=[out.save(grids.reals_grid(p.data, rows, cols, trained.image_size), "reals.png")],
            data=p.data,
        )
    sources = translation.real_sources(p.data, rows, trained.image_size)
    seeds = p.seeds[: translation.STYLES_PER_DOMAIN]
    if p.wants("translation"):
        table, columns = translation.latent_grid(trained, sources, seeds, device)
        finish(
            "translation",
            files=[out.save(image_grid(table, len(sources), columns), "translation.png")],
            domains=trained.classes,
            seeds=seeds,
        )
    else:
        skipped["translation"] = NOT_ASKED
    references = translation.domain_references(p.data, trained.num_classes, trained.image_size)
    if not p.wants("translation_reference"):
        skipped["translation_reference"] = NOT_ASKED
    elif references is None:
        skipped["translation_reference"] = f"{p.data} has no image of some domain (labels)"
    else:
        table = translation.reference_grid(trained, sources, references, device)
        picture = image_grid(table, len(sources) + 1, len(references) + 1)
        finish(
            "translation_reference",
            files=[out.save(picture, "translation-reference.png")],
            domains=trained.classes,
        )
    return summary(trained, p, done, skipped)


def project_reals(
    synth: Synth,
    trained: TrainedGenerator,
    p: RenderParams,
    stats: WStats,
    out: Outputs,
    load_features: Callable[[], projection.FeatureNetwork | None] | None,
    advance: Advance,
) -> dict[str, Any]:
    """Project ``project.targets`` real images: a picture of target | start | final per
    target, the optimisation as GIF and MP4, and the projected ws (``projection.pt``)."""
    targets, names = grids.real_images(p.data, p.project.targets, trained.image_size)
    loss = projection.reconstruction_loss(p.project, synth.device, load_features)
    with advance.part(f"projection of {len(names)} images", p.project.steps) as step:
        result = projection.project(synth, targets, stats, p.project, loss, advance=step)
    table = torch.stack([result.targets, result.start, result.final], dim=1).flatten(0, 1)
    picture = out.save(image_grid(table, len(names), 3), "projection.png")
    frames = write_videos(
        [np.stack(result.frames)],
        p.fps,
        out.image("projection.gif"),
        out.video("projection.mp4"),
    )
    with pio.atomic_path(out.root / "projection.pt") as tmp:
        torch.save({"names": names, "ws": result.ws, "space": p.project.space}, tmp)
    return dict(
        files=[picture, "images/projection.gif", "videos/projection.mp4", "projection.pt"],
        targets=names,
        space=p.project.space,
        steps=p.project.steps,
        loss=loss.name,
        loss_note=loss.note,
        start_loss=result.start_loss,
        final_loss=result.final_loss,
        frames=frames,
    )


def summary(
    trained: TrainedGenerator,
    p: RenderParams,
    done: dict[str, dict[str, Any]],
    skipped: dict[str, str],
) -> dict[str, Any]:
    return {
        "checkpoint": str(trained.path),
        "model": trained.model,
        "image_size": trained.image_size,
        "kimg": trained.kimg,
        "noise_mode": p.noise_mode,
        "rendered": done,
        "unsupported": {
            name: skipped[name]
            for name in (*RENDERS, "class_interpolation", *TRANSLATIONS)
            if name in skipped
        },
    }


def metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``dvc metrics show`` / ``dvc exp show`` compare: projection losses."""
    projected = summary["rendered"].get("projection")
    if not projected:
        return {}
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "projection": {
            "start_loss": mean(projected["start_loss"]),
            "final_loss": mean(projected["final_loss"]),
        }
    }
