"""StarGAN v2 translation of any picture, folder or frame sequence into the model's domains.

Latent-guided: ``styles`` random style codes per domain (seeded), from the mapping network.
Reference-guided: the style encoder's code of each reference image, in the domain the
reference belongs to (its file name's ``<domain>-`` prefix or its sub-folder). A frame
sequence gets one style for every frame (or a slowly moving one, ``style_motion``) and an
MP4 beside its PNG frames.

Output: ``<out>/<domain>/<style>/<source name>.png`` (``style-<k>`` or ``ref-<reference>``),
and ``<out>/<domain>/<style>.mp4`` for a sequence. Every name is unique and stays under
``<out>``: a zip member that is an absolute path or climbs with ``..`` is refused (recorded
in ``translate.json``), and two inputs that would share a name get distinct ones. Each
image is written atomically and an existing one is not redone, so a killed run resumes
where it stopped; ``translate.json`` records what the outputs were made from, and a
different checkpoint or settings start over.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from pipeline import io as pio
from pipeline.errors import StageError, first_line
from pipeline.images import ImageProblem, decode_image, open_image, save_png, to_rgb
from pipeline.io import safe_name
from pipeline.models.base import Capability
from pipeline.params import TranslateParams
from pipeline.training.checkpoint import TrainedGenerator
from pipeline.training.data import IMAGE_SUFFIXES, ImageDataset, resolve_dataset
from pipeline.training.sampling import to_uint8

SUMMARY = "translate.json"
FRAME_NUMBER = re.compile(r"^(.*?)(\d+)$")
# the settings that change the pictures (not where or how fast they are made)
DEFINING = ("source", "max_images", "reference", "styles", "seed", "sequence", "style_motion")
# How output names are made: part of the key, so outputs named otherwise start over.
NAMING = 2


@dataclass
class Picture:
    """One input image: its name (relative, no suffix) and how to read its bytes."""

    name: str
    read: Callable[[], Image.Image]
    where: str  # the file (or zip member) for messages
    suffix: str = ""  # its file's suffix (.jpg): tells apart x.png and x.jpg


def natural_key(name: str) -> list:
    """Sort key that puts frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def unsafe_name(name: str) -> str | None:
    """Why a zip member's name cannot become a path under the output folder (None: it can).

    Names are written as ``<out>/<domain>/<style>/<name>.png``: an absolute name or one
    with ``..`` would write anywhere ("zip slip"). ``\\`` counts as a separator too, as it
    does where the zip was made on Windows."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in parts:
        return "climbs out of its folder (..)"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' part in its path"
    return None


def list_pictures(
    path: str | Path, what: str, refused: dict[str, str] | None = None
) -> list[Picture]:
    """The images at ``path`` (an image, a folder searched recursively, a dataset zip or a
    folder holding one), in natural order of their names. Members whose name is not a safe
    relative path (``unsafe_name``) are left out, each with why in ``refused``."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [Picture(path.stem, lambda: open_image(path), str(path), path.suffix)]
    if not path.exists() and not path.is_symlink():
        raise StageError(f"{what}: {path} not found; give an image, a folder or a dataset zip")
    dataset = ImageDataset(resolve_dataset(path, what), what)
    pictures, left_out = [], {}
    for index, name in enumerate(dataset.names):
        where = dataset.where(index)
        if why := unsafe_name(name):
            left_out[where] = why
            continue
        stem, dot, suffix = name.rpartition(".")
        read = functools.partial(_decode_member, dataset, index)
        pictures.append(Picture(stem, read, where, dot + suffix))
    if refused is not None:
        refused.update(left_out)
    if not pictures:
        if left_out:
            first, why = next(iter(left_out.items()))
            raise StageError(
                f"{what}: {path}: none of its {len(left_out)} image(s) has a safe name "
                f"(e.g. {first}: {why}); rename them inside the folder"
            )
        raise StageError(f"{what}: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(pictures, key=lambda p: natural_key(p.name))


def _decode_member(dataset: ImageDataset, index: int) -> Image.Image:
    return decode_image(dataset.read_bytes(index))


def output_names(pictures: list[Picture]) -> list[str]:
    """Each picture's file under a style folder (``<name>.png``), one per picture: a name two
    pictures share (x.png and x.jpg) keeps its suffix in the later one's (x_jpg.png), as
    the dataset stage names them; over-long parts are cut (``pio.short_name``)."""
    stems = ["/".join(pio.short_name(part) for part in p.name.split("/")) for p in pictures]
    # a folder's name is taken too: a zip may hold both a.png and a.png/b.png
    taken = {str(d) for stem in stems for d in PurePosixPath(stem).parents if str(d) != "."}
    names = []
    for picture, stem in zip(pictures, stems, strict=True):
        kind = picture.suffix.lstrip(".").lower()
        candidates = [stem, f"{stem}_{kind}"] if kind else [stem]
        names.append(pio.unique_name(candidates, taken, picture.where, ".png"))
    return names


def inside(out: Path, relative: str) -> Path:
    """``out / relative``, checked to stay inside ``out`` (every name is made so; this is
    the last guard before a write)."""
    target = out / relative
    if os.path.isabs(relative) or ".." in PurePosixPath(relative).parts:
        raise StageError(f"translate: {relative}: not a path inside {out}; nothing written")
    return target


def is_sequence(pictures: list[Picture]) -> bool:
    """Frames of one video: two or more images named one prefix + consecutive numbers
    (``frame_0001.png`` …, ``0001.png`` …; a dataset's appid names are not consecutive)."""
    prefixes, numbers = set(), []
    for picture in pictures:
        match = FRAME_NUMBER.match(Path(picture.name).name)
        if not match:
            return False
        prefixes.add((str(Path(picture.name).parent), match.group(1)))
        numbers.append(int(match.group(2)))
    consecutive = all(b == a + 1 for a, b in itertools.pairwise(numbers))
    return len(pictures) > 1 and len(prefixes) == 1 and consecutive


def load_picture(picture: Picture, size: int, what: str) -> torch.Tensor:
    """3×size×size in [-1, 1]: the centre square, resized (Lanczos); one line if the image
    cannot be read or is smaller than the model's size."""
    try:
        im = to_rgb(picture.read())
    except ImageProblem as exc:
        raise StageError(f"{what}: {picture.where}: cannot be read ({exc})") from None
    except Exception as exc:  # Pillow and zipfile raise many types for damaged data
        first = first_line(exc)
        raise StageError(f"{what}: {picture.where}: cannot be read ({first})") from None
    width, height = im.size
    if min(width, height) < size:
        raise StageError(
            f"{what}: {picture.where} is {width}x{height}, smaller than the model's "
            f"{size}x{size}; use images at least that large"
        )
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1


def resolve_domains(requested: list[int | str] | None, classes: list[str]) -> list[int]:
    """Domain indices from indices or names (``translate.domains``); null: all."""
    if requested is None:
        return list(range(len(classes)))
    return [domain_index(item, classes, "translate.domains") for item in requested]


def domain_index(item: int | str, classes: list[str], what: str) -> int:
    if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
        if int(item) < len(classes):
            return int(item)
    elif item in classes:
        return classes.index(item)
    known = ", ".join(f"{i}: {name}" for i, name in enumerate(classes))
    raise StageError(f"{what}: unknown domain {item!r}; the checkpoint's domains are {known}")


def domain_folders(classes: list[str]) -> list[str]:
    """Each domain's folder name (``safe_name``), distinct: ``a b`` and ``a|b`` both read
    ``a_b``, so the second gets a short digest (``a_b-0eab8a``)."""
    taken: set[str] = set()
    return [pio.unique_name([safe_name(name)], taken, name) for name in classes]


def reference_domain(picture: Picture, classes: list[str]) -> int:
    """A reference's domain: its sub-folder's name, else its ``<domain>-`` name prefix
    (the longest domain name that fits, or an index)."""
    parts = Path(picture.name).parts
    if len(parts) > 1:
        return domain_index(parts[0], classes, f"translate.reference: {picture.name}")
    stem = parts[0]
    for name in sorted(classes, key=len, reverse=True):
        if stem.startswith(f"{name}-"):
            return classes.index(name)
    prefix = stem.split("-", 1)[0]
    if "-" in stem and prefix.isdigit():
        return domain_index(prefix, classes, f"translate.reference: {picture.name}")
    known = ", ".join(classes)
    raise StageError(
        f"translate.reference: {picture.where}: no domain; name it <domain>-… or put it in a "
        f"folder named after its domain ({known})"
    )


@dataclass
class Style:
    """One style of a domain: its folder name and a code per frame (``codes(n)``)."""

    domain: int
    tag: str
    codes: Callable[[int], torch.Tensor]  # frame count → n×style_dim


def latent_styles(
    net, domains: list[int], cfg: TranslateParams, frames: int, device: torch.device
) -> list[Style]:
    """``cfg.styles`` random styles per domain from seeded latents; with ``style_motion``
    each moves through further random styles, one every 1/style_motion frames."""
    keys = 1 if not cfg.style_motion else int(frames * cfg.style_motion) + 2
    styles = []
    for domain in domains:
        for k in range(cfg.styles):
            seed = cfg.seed * 1_000_003 + k
            z = torch.randn(keys, net.latent_dim, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                points = net.mapping(z.to(device), torch.full((keys,), domain, device=device))
            styles.append(Style(domain, f"style-{k}", moving(points, cfg.style_motion)))
    return styles


def moving(points: torch.Tensor, motion: float) -> Callable[[int], torch.Tensor]:
    """Codes for n frames: ``points[0]`` throughout, or a linear path through the points,
    one segment per 1/motion frames."""

    def codes(n: int) -> torch.Tensor:
        if not motion:
            return points[:1].expand(n, -1)
        position = torch.arange(n, device=points.device, dtype=points.dtype) * motion
        low = position.floor().long().clamp(max=len(points) - 2)
        t = (position - low)[:, None]
        return points[low] * (1 - t) + points[low + 1] * t

    return codes


def reference_styles(
    net, references: list[Picture], domains: list[int], classes: list[str], size: int,
    device: torch.device,
) -> list[Style]:  # fmt: skip
    """One style per reference whose domain is among ``domains``, each its own folder."""
    styles, taken = [], set()
    for picture in references:
        domain = reference_domain(picture, classes)
        if domain not in domains:
            continue
        image = load_picture(picture, size, "translate.reference")[None].to(device)
        with torch.no_grad():
            code = net.style_encoder(image, torch.tensor([domain], device=device))
        tag = pio.unique_name([f"ref-{safe_name(picture.name.replace('/', '-'))}"], taken,
                              picture.where)  # fmt: skip
        styles.append(Style(domain, tag, lambda n, c=code: c.expand(n, -1)))
    if not styles:
        raise StageError(
            "translate.reference: no reference in the requested domains "
            f"({', '.join(classes[d] for d in domains)})"
        )
    return styles


def fingerprint(checkpoint: Path, cfg: TranslateParams, domains: list[int]) -> str:
    """What the outputs are made from: the checkpoint's bytes and the defining settings."""
    digest = hashlib.sha256()
    with checkpoint.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    settings = {key: getattr(cfg, key) for key in DEFINING}
    key = {"settings": settings, "domains": domains, "naming": NAMING}
    digest.update(json.dumps(key, default=str).encode())
    return digest.hexdigest()[:16]


def start_over_unless_same(out: Path, key: str) -> bool:
    """Keep ``out``'s images if they were made from the same things (resume), else clear
    it; True when resuming."""
    summary = out / SUMMARY
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("key") == key:
                return True
        except ValueError:
            pass
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pio.write_json(summary, {"key": key, "complete": False})
    return False


def translate(
    trained: TrainedGenerator,
    cfg: TranslateParams,
    out: Path,
    device: torch.device,
    advance: Callable[[int], None] | None = None,
) -> dict:
    """Translate ``cfg.source`` into the requested domains under ``out``; return the summary
    (also written to ``out/translate.json``); ``advance`` moves once per image written or
    found."""
    net = trained.net
    if net is None or not trained.can(Capability.TRANSLATION):
        from pipeline.models import models_able

        raise StageError(
            f"{trained.path}: {trained.model} does not translate images; train one with "
            f"{models_able(Capability.TRANSLATION)} on a labelled dataset"
        )
    classes, size = trained.classes, trained.image_size
    domains = resolve_domains(cfg.domains, classes)
    refused: dict[str, str] = {}  # zip members whose names are not safe paths → why
    pictures = list_pictures(cfg.source, "translate.source", refused)[: cfg.max_images]
    names = output_names(pictures)
    sequence = is_sequence(pictures) if cfg.sequence == "auto" else cfg.sequence
    if cfg.reference is None:
        styles = latent_styles(net, domains, cfg, len(pictures), device)
    else:
        references = list_pictures(cfg.reference, "translate.reference", refused)
        styles = reference_styles(net, references, domains, classes, size, device)
    resumed = start_over_unless_same(out, fingerprint(Path(trained.path), cfg, domains))
    folders = domain_folders(classes)
    written, found = set(), set()  # output files: one per picture, style and domain
    videos = []
    for style in styles:
        folder = inside(out, f"{folders[style.domain]}/{style.tag}")
        codes = style.codes(len(pictures))
        targets = [inside(folder, name) for name in names]
        todo = [i for i, target in enumerate(targets) if not target.exists()]
        found.update(set(targets) - {targets[i] for i in todo})
        if advance and len(pictures) > len(todo):
            advance(len(pictures) - len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            rows = todo[start : start + cfg.batch_size]
            images = torch.stack(
                [load_picture(pictures[i], size, "translate.source") for i in rows]
            )
            with torch.no_grad():
                result = net.translate(images.to(device), codes[rows].to(device))
            for index, array in zip(rows, to_uint8(result), strict=True):
                save_png(Image.fromarray(array), targets[index])
                written.add(targets[index])
                if advance:
                    advance(1)
        if sequence:
            videos.append(str(write_sequence_video(folder, targets, cfg.fps)))
    summary = {
        "key": json.loads((out / SUMMARY).read_text())["key"],
        "complete": True,
        "checkpoint": str(trained.path),
        "kimg": trained.kimg,
        "guide": "latent" if cfg.reference is None else "reference",
        "domains": [classes[d] for d in domains],
        "folders": {classes[d]: folders[d] for d in domains},
        "styles": sorted({s.tag for s in styles}),
        "images": len(pictures),
        "sequence": sequence,
        "written": len(written),
        "already_there": len(found),
        "resumed": resumed,
        "videos": videos,
        "refused": refused,
    }
    pio.write_json(out / SUMMARY, summary)
    return summary


def write_sequence_video(folder: Path, frames_in_order: list[Path], fps: int) -> Path:
    """``<folder>.mp4`` from the translated frames, in order (rewritten every run)."""
    from pipeline.render.video import write_videos

    def frames():
        for frame in frames_in_order:
            with Image.open(frame) as im:
                yield np.asarray(im.convert("RGB"))[None]

    path = folder.with_suffix(".mp4")
    write_videos(frames(), fps, mp4=path)
    return path
