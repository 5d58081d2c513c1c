"""Test images made from the real capsules (and a few synthetic edge cases)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pandas as pd
from PIL import Image

from tests.fake_steam import CAPSULES


def capsule(index: int = 0) -> Image.Image:
    apps = pd.read_csv(CAPSULES / "apps.csv", keep_default_na=False)
    return Image.open(CAPSULES / apps["file"].iloc[index]).convert("RGB")


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def png_bomb(path: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A valid PNG header claiming ``width``×``height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path
