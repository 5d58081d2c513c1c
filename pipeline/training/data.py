"""Training data: the dataset stage's PNGs (folder or zip), in a resumable, rank-aware order.

The order is a pure function of (seed, position): a fresh permutation per epoch, read as one
endless stream. A resumed run starts at the position its checkpoint recorded and sees the
same images in the same order as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import StageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def resolve_dataset(path: str | Path, param: str | None = "train.data") -> Path:
    """A dataset zip, a folder of images, or a folder holding ``dataset.zip``. ``param``
    names the setting the path came from, for the message when it is not there."""
    path = Path(path)
    if path.is_dir() and (path / "dataset.zip").is_file():
        return path / "dataset.zip"
    if path.is_dir() or (path.is_file() and path.suffix == ".zip"):
        return path
    where = f"{param}: {path}" if param else str(path)
    raise StageError(f"{where} not found; run the dataset stage (dvc repro dataset) or set it")


class ImageDataset(torch.utils.data.Dataset):
    """RGB images of one size as uint8 C×H×W tensors, from a folder or a zip (NVlabs layout)."""

    def __init__(self, path: str | Path, param: str | None = "train.data"):
        self.path = resolve_dataset(path, param)
        self.is_zip = self.path.suffix == ".zip"
        self._zip: zipfile.ZipFile | None = None
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

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}  # each loader worker opens its own handle

    def read_bytes(self, index: int) -> bytes:
        name = self.names[index]
        if not self.is_zip:
            return (self.path / name).read_bytes()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(name)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(io.BytesIO(self.read_bytes(index))) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def check(self, image_size: int) -> None:
        """Stop with one line if the dataset is empty or any image is not image_size²."""
        if not self.names:
            raise StageError(f"{self.path}: no images; run the dataset stage (dvc repro dataset)")
        for index, name in enumerate(self.names):
            try:
                with Image.open(io.BytesIO(self.read_bytes(index))) as im:
                    size = im.size
            except Exception as exc:
                raise StageError(f"{self.path}: {name} is unreadable ({exc})") from None
            if size != (image_size, image_size):
                raise StageError(
                    f"{self.path}: {name} is {size[0]}x{size[1]} but train.image_size is "
                    f"{image_size}; set train.image_size={size[0]} or resize.size={image_size}"
                )

    def fingerprint(self) -> str:
        """Names and sizes of the images: which dataset a checkpoint was trained on."""
        digest = hashlib.sha256()
        for name, size in self.entries:
            digest.update(f"{name}\0{size}\n".encode())
        return digest.hexdigest()[:16]


class StreamSampler(torch.utils.data.Sampler):
    """Endless batches of indices for one rank, starting at global batch ``start``.

    Global batch ``b`` holds stream positions ``b·batch … b·batch + batch − 1`` of the
    concatenated per-epoch permutations; rank ``r`` of ``world`` takes its contiguous
    ``batch / world`` rows of it, so the ranks together see exactly what one process would.
    """

    def __init__(
        self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ):
        if batch % world:
            raise ValueError(f"batch {batch} is not divisible by {world} processes")
        self.size, self.batch, self.seed = size, batch, seed
        self.rank, self.world, self.start = rank, world, start
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=generator)
        return self._perm

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
    )
    return iter(loader)
