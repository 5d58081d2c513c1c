"""The report folder: ``index.html`` (the jinja2 template ``index.html.j2`` beside this file;
no JavaScript framework: a few lines of plain JS page and search the traceability table),
``funnel.svg``, ``trace.csv``, thumbnails and copies of the training and render pictures,
all beside the page."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from pipeline import io as pio
from pipeline.params import Params
from pipeline.progress import Advance, progress_bar
from pipeline.report.charts import curves_svg, funnel_svg
from pipeline.report.experiments import Experiments, exp_show, flatten_keys, metric_label
from pipeline.report.funnel import FunnelStep, funnel
from pipeline.report.sheets import Sheet, contact_sheets
from pipeline.report.sources import NotShown, RunOutputs, load_run, project_file
from pipeline.report.trace import TRACE_COLUMNS, trace_table

INDEX = "index.html"
FUNNEL_SVG = "funnel.svg"
TRACE_CSV = "trace.csv"
# Without render.json (an older or interrupted render), the pictures shown if present, in
# this order; with it, every picture it lists (``render_pictures``).
RENDER_PICTURES = (
    "fakes.png",
    "reals.png",
    "truncation.png",
    "average.png",
    "mixing.png",
    "ganspace.png",
    "sefa.png",
    "projection.png",
)
RENDER_GIFS = ("interpolation-w.gif", "interpolation-z.gif", "projection.gif")
# A metric whose null is explained by another key's note.
NOTE_OF = {"kid_std": "kid", "inception_score_std": "inception_score"}


def not_run(stage: str, what: str) -> str:
    """The one line a section shows when its stage has not run."""
    return f"The {stage} stage has not run ({what} is absent): run dvc repro {stage}."


@dataclass
class Picture:
    src: str
    caption: str


@dataclass
class Section:
    missing: str = ""  # the one line shown instead, when the stage has not run
    rows: list[tuple[str, Any, str]] = field(default_factory=list)  # (name, value, note)
    charts: list[Picture] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)


def _copy(run: RunOutputs, src: Path, report_dir: Path, folder: str) -> str | None:
    """Copy a picture beside the page; None (and a note) when ``src`` is not a regular file
    inside the project: a link out of it is never followed into the shared folder."""
    try:
        real = project_file(run.root, src)
    except NotShown as exc:
        run.notes.append(f"{run.relative(src)}: {exc}; not copied")
        return None
    (report_dir / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real, report_dir / folder / src.name)
    return f"{folder}/{src.name}"


def _pictures(run: RunOutputs, report_dir: Path, folder: str, pictures: list) -> list[Picture]:
    """``Picture``s of (source, caption) pairs, copied beside the page (``_copy``)."""
    out = []
    for src, caption in pictures:
        if (copied := _copy(run, src, report_dir, folder)) is not None:
            out.append(Picture(copied, caption))
    return out


def _number(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _device(setting: str, cuda: bool) -> tuple[str, str]:
    """The device a run used: the setting, or for ``auto`` what the log shows (the train
    stage does not log the device; it logs peak GPU memory on CUDA and only there)."""
    if setting != "auto":
        return setting, "train.device"
    return ("cuda" if cuda else "cpu"), "train.device auto; peak GPU memory " + (
        "is logged, so CUDA" if cuda else "is not logged, so not CUDA"
    )


def _precision(setting: str, cuda: bool) -> tuple[str, str]:
    if setting != "auto":
        return setting, "train.precision"
    if cuda:
        return "bf16 or fp16", "train.precision auto: bf16 where the GPU supports it (not logged)"
    return "fp32", "train.precision auto, off CUDA"


FINITE_CURVE = "loss/finite"  # DVCLive's 1 (every loss finite) or 0, per logged step


def _non_finite(df) -> tuple[str, str]:
    """How many logged steps had a non-finite loss (the train stage skips those steps and,
    after train.nan_tolerance in a row, goes back to its checkpoint)."""
    values = df[df.columns[1]]
    bad = df.loc[values < 1, "step"].tolist()
    if not bad:
        return "0", f"of {len(values):,} logged steps"
    shown = ", ".join(f"{int(s):,}" for s in bad[:5]) + (" …" if len(bad) > 5 else "")
    return f"{len(bad):,}", f"of {len(values):,} logged steps (at {shown})"


def training_section(run: RunOutputs, params: Params, report_dir: Path) -> Section:
    train = run.train
    if not train.ran:
        return Section(missing=not_run("train", "dvclive/metrics.json"))
    m = train.metrics or {}
    cuda = "memory" in m  # the train stage logs peak GPU memory on CUDA only
    section = Section()
    speed = (m.get("speed") or {}).get("images_per_s")
    info = train.run or {}
    resolved = "data/train/run.json"
    section.rows = [
        ("model", params.train.model, ""),
        ("step", _number(m.get("step")), f"of train.steps {params.train.steps:,}"),
        ("kimg", _number(m.get("kimg")), "thousands of real images shown to D"),
        ("images/s", _number(speed), "over the last log interval"),
    ]
    if info:  # what the train stage resolved; older runs: inferred from the log below
        counts = info.get("parameters") or {}
        classes = info.get("classes") or []
        section.rows += [
            ("precision", str(info.get("precision")), resolved),
            ("device", str(info.get("device")), resolved),
            ("parameters", f"G {_number(counts.get('G'))}, D {_number(counts.get('D'))}", resolved),
            ("classes", ", ".join(map(str, classes)) if classes else "unconditional", resolved),
        ]
    else:
        section.rows += [
            ("precision", *_precision(params.train.precision, cuda)),
            ("device", *_device(params.train.device, cuda)),
        ]
    if cuda:
        for key, value in (m.get("memory") or {}).items():
            section.rows.append((f"memory/{key}", _number(value), ""))
    groups: dict[str, dict] = {}
    for name, df in train.curves.items():
        group = name.split("/")[0] if "/" in name else name
        if name == FINITE_CURVE:  # a 0/1 flag: a row, not a curve beside the losses
            section.rows.append(("non-finite steps", *_non_finite(df)))
        elif group != "kimg":
            groups.setdefault(group, {})[name] = df
    for group, curves in groups.items():
        path = report_dir / "training" / f"{group}.svg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(curves_svg(group, curves))
        section.charts.append(Picture(f"training/{group}.svg", group))
    shown = []
    if train.samples:
        latest = train.samples[-1]
        step = int(latest.stem) if latest.stem.isdigit() else latest.stem
        shown.append((latest, f"latest sample grid (step {step})"))
    render = run.file("render", "render")
    if isinstance(render, dict):
        strips = [path for name, path in render_pictures(render, run.root / "data" / "render")
                  if name == "progress"]  # fmt: skip
    else:
        strips = [run.root / "data" / "render" / "images" / "progress.png"]
    for progress in strips:
        if _present(progress):
            shown.append((progress, "progress strip: one column per snapshot"))
    section.pictures = _pictures(run, report_dir, "training", shown)
    return section


def evaluation_section(
    run: RunOutputs, params: Params, report_dir: Path
) -> tuple[Section, Section]:
    metrics = run.file("evaluate", "metrics")
    if metrics is None:
        evaluation = Section(missing=not_run("evaluate", "data/evaluate/metrics.json"))
    else:
        notes_file = run.file("evaluate", "notes") or {}
        notes, warnings = notes_file.get("notes", {}), notes_file.get("warnings", {})
        evaluation = Section()
        for key, value in flatten_keys(metrics).items():  # fid_per_class.<class>
            if value is None:
                note = notes.get(key) or notes.get(NOTE_OF.get(key, ""), "")
            else:  # the small-sample warnings the stage printed
                warning = warnings.get(key) or warnings.get(NOTE_OF.get(key, ""), "")
                note = f"warning: {warning}" if warning else ""
            evaluation.rows.append((key, _number(value), note))
        settings = (run.file("evaluate", "notes") or {}).get("settings", {})
        for key, value in settings.items():
            if key.endswith("note"):
                evaluation.rows.append((key, "", str(value)))
    images = run.root / "data" / "render" / "images"
    render = run.file("render", "render")
    if render is None and not images.is_dir():
        return evaluation, Section(missing=not_run("render", "data/render/render.json"))
    renders = Section()
    if isinstance(render, dict):  # what render drew, from its own list
        listed = render_pictures(render, images.parent)
        shown = [(path, f"{name}: {path.name}") for name, path in listed]
        unsupported = render.get("unsupported")
        renders.rows += skipped_rows(unsupported if isinstance(unsupported, dict) else {})
    else:
        shown = [(images / name, name) for name in RENDER_PICTURES if _present(images / name)]
        shown += [(p, p.name) for p in sorted(images.glob("mixing-psi*.png"))]
        gif = next((images / g for g in RENDER_GIFS if _present(images / g)), None)
        if gif is not None:
            shown.append((gif, gif.name))
    renders.pictures = _pictures(run, report_dir, "render", shown)
    for key, value in flatten_keys(run.file("render", "metrics") or {}).items():
        renders.rows.append((key, _number(value), ""))
    return evaluation, renders


def render_pictures(render: dict, folder: Path) -> list[tuple[str, Path]]:
    """(render name, picture) for every picture ``render.json`` lists, in the order they
    were drawn: PNGs, and the first GIF (the videos are MP4s beside them, not shown here).
    Only plain names under ``images/`` are taken from the file: nothing it says can point
    the report elsewhere."""
    pictures, gif_shown = [], False
    for name, record in (render.get("rendered") or {}).items():
        files = record.get("files") if isinstance(record, dict) else None
        for entry in files if isinstance(files, list) else []:
            parts = PurePosixPath(str(entry)).parts
            if len(parts) != 2 or parts[0] != "images" or parts[1] in ("..", "."):
                continue
            suffix = PurePosixPath(parts[1]).suffix.lower()
            if suffix == ".png" or (suffix == ".gif" and not gif_shown):
                gif_shown |= suffix == ".gif"
                pictures.append((str(name), folder / parts[0] / parts[1]))
    return pictures


def skipped_rows(unsupported: dict) -> list[tuple[str, str, str]]:
    """One "not drawn" row per reason render gave (the names it covers, the reason)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in unsupported.items():
        by_reason.setdefault(str(why), []).append(str(name))
    return [("not drawn", ", ".join(names), why) for why, names in by_reason.items()]


def _present(path: Path) -> bool:
    """There, as a file or a link (a dangling or outside link gets a note, not silence)."""
    return path.exists() or path.is_symlink()


TEMPLATE = Path(__file__).with_name("index.html.j2")


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def _stage_of(path: str) -> str:
    """The stage that writes ``path`` (``data/<stage>/…``; DVCLive's files are train's)."""
    parts = Path(path).parts
    return parts[1] if len(parts) > 2 and parts[0] == "data" else "train"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(
        not_run=not_run, number=_number, metric_label=metric_label, stage_of=_stage_of
    )
    return env


def _headline(steps: list[FunnelStep]) -> str:
    ran = [s for s in steps if s.count is not None]
    if not ran:
        return "Nothing has run yet: `dvc repro` runs the pipeline, then this report."
    first, last = ran[0], ran[-1]
    return f"{last.count:,} images in the {last.label} from {first.count:,} {first.label}"


def _experiments_missing(experiments: Experiments | None) -> str:
    if experiments is None:
        return "Not listed (report.experiments: false)."
    if experiments.error:
        return experiments.error
    if len(experiments.rows) < 2:
        return (
            "Only one run so far: `dvc exp run -S section.key=value` adds experiments to compare."
        )
    return ""


SECTIONS = 5  # progress steps of render_page


def render_page(
    run: RunOutputs,
    params: Params,
    report_dir: Path,
    experiments: Experiments | None,
    advance: Advance = Advance(),
) -> str:
    """Write the pictures and CSV into ``report_dir`` and return the page's HTML;
    ``advance`` is called after each of the SECTIONS parts."""
    steps = funnel(run, params)
    funnel_ran = any(s.count is not None for s in steps)
    if funnel_ran:
        (report_dir / FUNNEL_SVG).write_text(funnel_svg(steps))
    advance(status="funnel")
    sheets: list[Sheet] = contact_sheets(run, params, report_dir)
    advance(status=f"{len(sheets)} contact sheets")
    trace = trace_table(run)
    trace.to_csv(report_dir / TRACE_CSV, index=False)
    advance(status=f"{len(trace):,} traceability rows")
    training = training_section(run, params, report_dir)
    advance(status="training")
    evaluation, renders = evaluation_section(run, params, report_dir)
    advance(status="evaluation and renders")
    # no "<" at all inside the <script>: a name holding "</script>" or "<!--" cannot end or
    # change it (JSON reads the escape back as "<")
    trace_json = json.dumps(trace.values.tolist(), separators=(",", ":")).replace("<", "\\u003c")
    template = _environment().from_string(TEMPLATE.read_text())
    return template.render(
        headline=_headline(steps),
        damaged={_relative(path, run.root): why for path, why in run.damaged.items()},
        notes=run.notes,
        funnel=steps,
        funnel_ran=funnel_ran,
        funnel_missing=not_run("appids", "data/appids/appids.parquet"),
        funnel_svg=FUNNEL_SVG,
        sheets=sheets,
        sheets_missing=not_run("validate", "data/validate/rejected.parquet"),
        examples=params.report.examples,
        trace_rows=len(trace),
        trace_missing=not_run("download", "data/download/manifest.parquet"),
        trace_columns=TRACE_COLUMNS,
        trace_json=jinja2.utils.markupsafe.Markup(trace_json),
        trace_csv=TRACE_CSV,
        page_size=params.report.page_size,
        training=training,
        evaluation=evaluation,
        renders=renders,
        experiments=experiments,
        experiments_missing=_experiments_missing(experiments),
    )


def build_report(
    params: Params,
    root: Path = Path("."),
    out_dir: Path | None = None,
    experiments: Experiments | None = None,
) -> Path:
    """Build the report folder from the stage outputs under ``root``; return the page's path.

    ``experiments`` defaults to asking ``dvc exp show`` (when ``report.experiments``).
    The folder is built aside and swapped in whole, so a failure leaves the last report."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / pio.stage_dir("report")
    if experiments is None and params.report.experiments:
        experiments = exp_show(root)
    run = load_run(root)
    with pio.atomic_dir(out_dir) as tmp, progress_bar(SECTIONS, "report") as advance:
        html = render_page(run, params, tmp, experiments, advance)
        (tmp / INDEX).write_text(html)
    return out_dir / INDEX
