"""Image helpers shared by the curation stages: opening safely, flattening, PNG encoding."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline import io as pio


class ImageProblem(Exception):
    """An image a stage must reject; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_regular_file(path: str | Path) -> None:
    """Raise ImageProblem unless ``path`` is a regular file (or a link to one).

    Opening a FIFO named ``.jpg`` blocks until something writes to it (validate hung), and
    a device such as /dev/zero never ends; neither is an image.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageProblem("unreadable", "file not found") from None
    except OSError as exc:
        raise ImageProblem("unreadable", f"{exc.__class__.__name__}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ImageProblem("unreadable", f"not a regular file ({file_kind(mode)})")


def file_kind(mode: int) -> str:
    """What a file system entry is, from its ``st_mode``, for messages."""
    kinds = {
        stat.S_ISREG: "a regular file",
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a device")


def decode_failure(exc: Exception) -> str:
    """Why bytes did not decode, in one line that names no Python object: Pillow's "cannot
    identify image file <_io.BytesIO object at 0x…>" names its buffer, not the file."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify"
    return (str(exc).splitlines() or [exc.__class__.__name__])[0][:200]


def upright(im: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (in place).

    Cameras and phones store pixels sideways with an Orientation tag; ignoring it trains
    on sideways banners. A damaged EXIF block leaves the image as stored.
    """
    with contextlib.suppress(Exception):  # Pillow raises several types for bad EXIF
        ImageOps.exif_transpose(im, in_place=True)
    return im


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes (a zip member, say) upright, as ``open_image`` does a file."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return upright(im)


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image, upright, or raise ImageProblem (never a decoder's
    exception). The one way the stages read an image file.

    Only regular files are opened. Decompression bombs are refused from the header alone,
    before any pixel is decoded.
    """
    check_regular_file(path)
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
    return upright(im)


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


# How PNGs are compressed. PNG encoding is most of the resize stage's time, so it goes
# through imagecodecs (libpng with a fixed filter), 2.4x faster than Pillow's encoder, which
# always tries all five row filters. "fast": Paeth filter + zlib Huffman-only, as small as
# Pillow at level 9 on photographs; "small": zlib level 9 with libpng's filter heuristics;
# "none": stored, as NVlabs' dataset_tool writes (twice the size).
PNG_COMPRESSION = {
    "fast": {"level": 1, "strategy": 2, "filter": 128},  # Z_HUFFMAN_ONLY, PNG_FILTER_PAETH
    "small": {"level": 9},
    "none": {"level": 0},
}


def encode_png(im: Image.Image, compression: str = "fast") -> bytes:
    # imported here: reading images (training's data loader) must not need the encoder,
    # which the GPU check does not carry (bench/gpu: a 26 MB wheel)
    import imagecodecs

    return bytes(imagecodecs.png_encode(np.asarray(im), **PNG_COMPRESSION[compression]))


def save_png(im: Image.Image, path: str | Path, compression: str = "fast") -> None:
    """Write a PNG atomically (temporary name, then rename)."""
    pio.write_bytes(path, encode_png(im, compression))


def channel_sums(im: Image.Image) -> tuple[list[int], list[int]]:
    """Exact per-channel sum and sum of squares of an RGB image, from its histogram."""
    histogram = np.asarray(im.histogram(), dtype=np.int64).reshape(-1, 256)
    levels = np.arange(256, dtype=np.int64)
    return (histogram @ levels).tolist(), (histogram @ (levels * levels)).tolist()
