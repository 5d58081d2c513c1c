"""Image helpers shared by the curation stages: opening safely, flattening, PNG encoding."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import io as pio


class ImageProblem(Exception):
    """An image a stage must reject; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image, or raise ImageProblem (never a decoder's exception).

    Decompression bombs are refused from the header alone, before any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise ImageProblem("unreadable", "file not found") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageProblem("too_large", str(exc).split(".")[0]) from None
    except Exception as exc:  # Pillow raises many types for garbage input
        raise ImageProblem("unreadable", f"{exc.__class__.__name__}: {exc}"[:200]) from None
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageProblem("too_large", f"{width}x{height} is over {max_pixels} pixels")
    try:
        im.load()
    except Exception as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text or isinstance(exc, EOFError) else "unreadable"
        raise ImageProblem(reason, f"{exc.__class__.__name__}: {text}"[:200]) from None
    return im


def to_rgb(im: Image.Image, matte: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """RGB version of any mode; transparency is composited onto ``matte``."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*matte, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


# How resized PNGs are compressed. "fast" is zlib's Huffman-only strategy: after PNG's row
# filters it is as small as level 9 on photographs at a fifth of the time. "none" is what
# NVlabs' dataset_tool writes (twice the size); "small" is zlib level 9.
PNG_COMPRESSION = {
    "fast": {"compress_level": 9, "compress_type": 2},  # 2: zlib.Z_HUFFMAN_ONLY
    "small": {"compress_level": 9},
    "none": {"compress_level": 0},
}


def encode_png(im: Image.Image, compression: str = "fast") -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", **PNG_COMPRESSION[compression])
    return buffer.getvalue()


def save_png(im: Image.Image, path: str | Path, compression: str = "fast") -> None:
    """Write a PNG atomically (temporary name, then rename)."""
    pio.write_bytes(path, encode_png(im, compression))


def channel_sums(im: Image.Image) -> tuple[list[int], list[int]]:
    """Exact per-channel sum and sum of squares of an RGB image, from its histogram."""
    histogram = np.asarray(im.histogram(), dtype=np.int64).reshape(-1, 256)
    levels = np.arange(256, dtype=np.int64)
    return (histogram @ levels).tolist(), (histogram @ (levels * levels)).tolist()
