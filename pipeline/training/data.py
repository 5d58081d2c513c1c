"""Training data: the dataset stage's PNGs (folder or zip), in a resumable, rank-aware order.

The order is a pure function of (seed, position): a fresh permutation per epoch, read as one
endless stream (or, class-balanced, a class drawn uniformly then one of its images). A
resumed run starts at the position its checkpoint recorded and sees the same images in the
same order as an uninterrupted run would.

A labelled dataset's ``dataset.json`` (NVlabs' ``{"labels": [[name, class_index], ...]}``,
plus our ``"classes"`` names) gives each image its class.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.images import decode_failure, decode_image, file_kind
from pipeline.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DATASET_JSON = "dataset.json"


def resolve_dataset(path: str | Path, param: str | None = "train.data") -> Path:
    """A dataset zip, a folder of images, or a folder holding ``dataset.zip``. ``param``
    names the setting the path came from, for the message when it is none of them: one
    that says what the path is (missing, a dangling link, a FIFO, a file that is no zip)."""
    path = Path(path)
    if path.is_dir() and (path / "dataset.zip").is_file():
        return path / "dataset.zip"
    if path.is_dir() or (path.is_file() and path.suffix == ".zip"):
        return path
    where = f"{param}: {path}" if param else str(path)
    if path.is_symlink() and not path.exists():
        raise StageError(f"{where}: a link to {os.readlink(path)}, which does not exist; fix it")
    if not path.exists():
        raise StageError(f"{where} not found; run the dataset stage (dvc repro dataset) or set it")
    try:
        kind = file_kind(path.stat().st_mode)
    except OSError as exc:
        raise StageError(f"{where}: cannot be read ({exc.strerror})") from None
    why = "its name does not end in .zip" if path.is_file() else "only folders and files are read"
    raise StageError(
        f"{where} is {kind}, not a folder of images or a dataset zip ({why}); point it at one"
    )


class ImageDataset(torch.utils.data.Dataset):
    """RGB images of one size as uint8 C×H×W tensors, from a folder or a zip (NVlabs layout).

    ``classes`` names the classes of a labelled dataset (empty when unlabelled) and
    ``labels`` holds each image's class index in ``names`` order (None when unlabelled).
    With ``with_labels`` an item is ``(image, class_index)``, so a DataLoader's batches are
    ``(images, labels)``.
    """

    def __init__(
        self, path: str | Path, param: str | None = "train.data", with_labels: bool = False
    ):
        self.path = resolve_dataset(path, param)
        self.is_zip = self.path.suffix == ".zip"
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = 0  # the process that opened self._zip
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    infos = archive.infolist()
            except zipfile.BadZipFile:
                raise StageError(f"{self.path}: not a zip file; re-run the dataset stage") from None
            entries = [(i.filename, i.file_size) for i in infos]
        else:
            entries = [
                (p.relative_to(self.path).as_posix(), p.stat().st_size)
                for p in self.path.rglob("*")
                if p.is_file()
            ]
        self.entries = sorted(e for e in entries if e[0].lower().endswith(IMAGE_SUFFIXES))
        self.names = [name for name, _ in self.entries]
        self.skipped: dict[str, str] = {}  # images that cannot be decoded → why (see check)
        self.classes, self._class_of = self._read_labels()
        self.with_labels = with_labels

    def _read_labels(self) -> tuple[list[str], dict[str, int] | None]:
        """(class names, image name → class index) from dataset.json; ([], None) when it is
        absent or says ``"labels": null``. A file that does not fit the images stops."""
        where = f"{self.path}/{DATASET_JSON}" if self.is_zip else self.path / DATASET_JSON
        try:
            if self.is_zip:
                with zipfile.ZipFile(self.path) as archive:
                    if DATASET_JSON not in archive.namelist():
                        return [], None
                    text = archive.read(DATASET_JSON)
            elif (self.path / DATASET_JSON).is_file():
                text = (self.path / DATASET_JSON).read_bytes()
            else:
                return [], None
            meta = json.loads(text)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise StageError(f"{where}: unreadable ({exc}); re-run the dataset stage") from None
        return parse_labels(meta, set(self.names), where)

    @property
    def with_labels(self) -> bool:
        return self._with_labels

    @with_labels.setter
    def with_labels(self, value: bool) -> None:
        if value and self._class_of is None:
            raise StageError(
                f"{self.path}: has no labels (dataset.json says none); build a labelled "
                "dataset (dataset.labels=tags or folders) or train without labels"
            )
        self._with_labels = bool(value)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> torch.Tensor | None:
        """Each image's class index (int64), in ``names`` order; None when unlabelled."""
        if self._class_of is None:
            return None
        return torch.tensor([self._class_of[name] for name in self.names], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}  # spawned loader workers open their own handle

    def _archive(self) -> zipfile.ZipFile:
        """The zip, opened by this process. A forked DataLoader worker inherits the parent's
        ZipFile and with it one shared file offset: reads from several processes interleave
        and fail with ``BadZipFile: Bad CRC-32``. So each process opens its own."""
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)  # an inherited one is left to its owner
            self._zip_pid = os.getpid()
        return self._zip

    def close(self) -> None:
        """Close this process's handle on the zip (workers forked later open their own)."""
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip, self._zip_pid = None, 0

    def read_bytes(self, index: int) -> bytes:
        name = self.names[index]
        if not self.is_zip:
            return (self.path / name).read_bytes()
        return self._archive().read(name)

    def where(self, index: int) -> str:
        """Image ``index`` as messages name it: ``<folder>/<name>`` or ``<zip>:<name>``."""
        return f"{self.path}{':' if self.is_zip else '/'}{self.names[index]}"

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        try:
            with decode_image(self.read_bytes(index)) as im:  # upright (EXIF orientation)
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:  # Pillow and zipfile raise many types for damaged data
            raise StageError(
                f"{self.where(index)}: cannot be read as an image ({decode_failure(exc)}); "
                "replace or remove it"
            ) from None
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        if self._with_labels:
            return image, self._class_of[self.names[index]]  # type: ignore[index]
        return image

    def check(self, image_size: int, record: str | Path | None = None) -> dict[str, str]:
        """Decode every image once; set aside those that cannot be decoded, stop with one line
        if none is left or an image is not image_size².

        A header check is not enough: a truncated PNG opens, then fails in the middle of
        training at the step that reads it, and again at the same step after every resume.
        Unreadable images are left out of ``names`` and returned (name → why). ``record`` is
        a JSON file that keeps the result for this exact content (``content_key``), so the
        decoding is paid once per dataset, not once per run.
        """
        if not self.names:
            raise StageError(f"{self.path}: no images; run the dataset stage (dvc repro dataset)")
        key = self.content_key()
        cached = _read_record(record, key, image_size)
        if cached is not None:
            bad = cached
        else:
            bad = {}
            with progress_bar(len(self.names), f"check {self.path.name}") as advance:
                for index, name in enumerate(self.names):
                    size = self._decoded_size(index, bad)
                    if size is not None and size != (image_size, image_size):
                        raise StageError(
                            f"{self.path}: {name} is {size[0]}x{size[1]} but train.image_size "
                            f"is {image_size}; set train.image_size={size[0]} or "
                            f"resize.size={image_size}"
                        )
                    advance()
            if record is not None:
                pio.write_json(record, {"key": key, "image_size": image_size, "unreadable": bad})
        self.close()  # forked loader workers must not share this process's zip handle
        self.skipped = {name: why for name, why in bad.items() if name in self.names}
        self.names = [name for name in self.names if name not in bad]
        if not self.names:
            raise StageError(
                f"{self.path}: none of its {len(self.skipped)} images can be decoded "
                f"(e.g. {next(iter(self.skipped))}); re-run the dataset stage"
            )
        return self.skipped

    def _decoded_size(self, index: int, bad: dict[str, str]) -> tuple[int, int] | None:
        """The image's size after decoding it completely; None (and a reason in ``bad``) if
        it cannot be read (a zip entry's CRC is checked by reading it whole)."""
        name = self.names[index]
        try:
            with decode_image(self.read_bytes(index)) as im:
                return im.size
        except Exception as exc:  # Pillow and zipfile raise many types for damaged data
            bad[name] = decode_failure(exc)
            return None

    def content_key(self) -> str:
        """Names, sizes and CRC-32s (zip) or modification times (folder): changes whenever
        an image is rewritten, so a recorded check is never trusted for other bytes."""
        digest = hashlib.sha256(str(self.path.resolve()).encode())
        if self.is_zip:
            with zipfile.ZipFile(self.path) as archive:
                stamps = {i.filename: (i.file_size, i.CRC) for i in archive.infolist()}
        else:
            stamps = {}
            for name in self.names:
                stat = (self.path / name).stat()
                stamps[name] = (stat.st_size, stat.st_mtime_ns)
        for name in self.names:
            digest.update(f"{name}\0{stamps.get(name)}\n".encode())
        return digest.hexdigest()[:32]

    def fingerprint(self) -> str:
        """Names and sizes of the images, and the classes and each image's class when
        labelled: which dataset a checkpoint was trained on (a relabelled dataset is another
        one; an unlabelled one's fingerprint is what it was before labels existed)."""
        digest = hashlib.sha256()
        for name, size in self.entries:
            digest.update(f"{name}\0{size}\n".encode())
        if self._class_of is not None:
            digest.update(json.dumps(self.classes).encode())
            for name, _ in self.entries:
                digest.update(f"{name}\0{self._class_of[name]}\n".encode())
        return digest.hexdigest()[:16]


def parse_labels(meta: object, names: set[str], where: object) -> tuple[list[str], dict | None]:
    """(classes, image name → class index) of a parsed dataset.json, checked against the
    dataset's image ``names``: every image labelled, every label an image, every index a
    class. ``classes`` absent (an NVlabs dataset): the indices' own numbers as names."""

    def fail(problem: str) -> StageError:
        return StageError(f"{where}: {problem}; re-run the dataset stage (dvc repro dataset)")

    if not isinstance(meta, dict):
        raise fail('expected an object with "labels"')
    entries = meta.get("labels")
    if entries is None:
        return [], None
    ok = isinstance(entries, list) and all(
        isinstance(e, list | tuple) and len(e) == 2 and isinstance(e[0], str)
        and isinstance(e[1], int) and not isinstance(e[1], bool)
        for e in entries
    )  # fmt: skip
    if not ok:
        raise fail('"labels" must be a list of [file name, class index] pairs')
    class_of = {name: index for name, index in entries}
    classes = meta.get("classes")
    if classes is None:
        classes = [str(i) for i in range(max(class_of.values(), default=-1) + 1)]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise fail('"classes" must be a list of names')
    if len(set(classes)) != len(classes):
        raise fail('"classes" must be a list of distinct names')
    unknown = sorted(set(class_of) - names)
    if unknown:
        raise fail(f"labels name {len(unknown)} file(s) not in the dataset, e.g. {unknown[0]}")
    missing = sorted(names - set(class_of))
    if missing:
        raise fail(f"{len(missing)} image(s) have no label, e.g. {missing[0]}")
    bad = next(((n, i) for n, i in class_of.items() if not 0 <= i < len(classes)), None)
    if bad is not None:
        raise fail(
            f"{bad[0]} has class {bad[1]}, outside 0..{len(classes) - 1} ({len(classes)} classes)"
        )
    return list(classes), class_of


def _read_record(record: str | Path | None, key: str, image_size: int) -> dict[str, str] | None:
    """The unreadable images a previous check of this very content found, or None."""
    if record is None or not Path(record).is_file():
        return None
    try:
        data = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return None  # a damaged record: check again
    if not isinstance(data, dict) or data.get("key") != key or data.get("image_size") != image_size:
        return None
    bad = data.get("unreadable")
    if not isinstance(bad, dict):
        return None
    return {str(k): str(v) for k, v in bad.items()}


def skipped_line(path: Path, skipped: dict[str, str], record: Path | None = None) -> str:
    """One line naming the images left out of training and where the full list is."""
    shown = ", ".join(f"{name} ({why})" for name, why in list(skipped.items())[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    where = f"; listed in {record}" if record else ""
    return (
        f"{path}: left out {len(skipped)} image(s) that cannot be decoded: {shown}{more}"
        f"{where}; re-run the dataset stage (dvc repro -f dataset) to rebuild it"
    )


class StreamSampler(torch.utils.data.Sampler):
    """Endless batches of indices for one rank, starting at global batch ``start``.

    Global batch ``b`` holds stream positions ``b·batch … b·batch + batch − 1`` of the
    concatenated per-epoch permutations; rank ``r`` of ``world`` takes its contiguous
    ``batch / world`` rows of it, so the ranks together see exactly what one process would.

    With ``balance`` and ``labels`` (each index's class), each position is instead a class
    drawn uniformly (among those with images), then one of its images uniformly: a small
    class is seen as often as a big one. Still a pure function of (seed, position).
    """

    def __init__(
        self,
        size: int,
        batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        labels: Sequence[int] | torch.Tensor | None = None,
        balance: bool = False,
    ):
        if batch % world:
            raise ValueError(f"batch {batch} is not divisible by {world} processes")
        self.size, self.batch, self.seed = size, batch, seed
        self.rank, self.world, self.start = rank, world, start
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self._members: torch.Tensor | None = None  # balanced: indices grouped by class
        if balance and labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (size,):
                raise ValueError(f"{labels.numel()} labels for {size} images")
            # indices sorted by class (stable), each class's first position and its count
            self._members = torch.argsort(labels, stable=True)
            _, self._counts = torch.unique(labels, return_counts=True)
            self._starts = torch.cumsum(self._counts, 0) - self._counts

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The indices of stream positions ``epoch·size … epoch·size + size − 1``."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self._members is None:
                self._perm = torch.randperm(self.size, generator=generator)
            else:
                self._perm = self._balanced_draws(generator)
            self._epoch = epoch
        return self._perm

    def _balanced_draws(self, generator: torch.Generator) -> torch.Tensor:
        """``size`` indices, each of a uniformly drawn class, then uniform within it."""
        classes = torch.randint(len(self._counts), (self.size,), generator=generator)
        within = torch.rand(self.size, generator=generator, dtype=torch.float64)
        offset = (within * self._counts[classes]).long().clamp_max(self._counts[classes] - 1)
        return self._members[self._starts[classes] + offset]

    def batch_indices(self, number: int) -> list[int]:
        local = self.batch // self.world
        first = number * self.batch + self.rank * local
        return [
            int(self._permutation(pos // self.size)[pos % self.size])
            for pos in range(first, first + local)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        number = self.start
        while True:
            yield self.batch_indices(number)
            number += 1


def make_loader(
    dataset: ImageDataset,
    sampler: StreamSampler,
    workers: int,
    pin_memory: bool,
) -> Iterator[torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # The loader draws its workers' base seed from this generator, not from torch's
        # global RNG: otherwise every (re)start of the loader moves the global RNG, and a
        # resumed run's global draws (a model's dropout) would be one draw off.
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)
