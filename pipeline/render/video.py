"""GIF and MP4 from a stream of frames.

MP4 goes through the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (no system
ffmpeg needed), as H.264 in yuv420p, which browsers and players read. GIF is Pillow's
(which merges a frame identical to the one before into it, lengthening that frame).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import io as pio


def write_videos(
    frames: Iterable[np.ndarray],
    fps: int,
    gif: str | Path | None = None,
    mp4: str | Path | None = None,
) -> int:
    """Write batches of frames (N×H×W×3 uint8 arrays) to a GIF and/or an MP4, each
    atomically; return the number of frames."""
    import imageio_ffmpeg  # the ffmpeg binary: imported only when a video is written

    gif_frames: list[Image.Image] = []
    count = 0
    with contextlib.ExitStack() as stack:
        mp4_tmp = stack.enter_context(pio.atomic_path(mp4)) if mp4 is not None else None
        writer = None
        try:
            for batch in frames:
                for frame in batch:
                    if mp4_tmp is not None:
                        if writer is None:
                            height, width = frame.shape[:2]
                            writer = imageio_ffmpeg.write_frames(
                                str(mp4_tmp),
                                (width, height),
                                fps=fps,
                                codec="libx264",
                                output_params=["-f", "mp4"],  # the temporary name ends in .part
                            )
                            writer.send(None)  # start ffmpeg
                        writer.send(np.ascontiguousarray(frame))
                    if gif is not None:
                        gif_frames.append(Image.fromarray(frame))
                    count += 1
        finally:
            if writer is not None:
                writer.close()
    if gif is not None and gif_frames:
        with pio.atomic_path(gif) as gif_tmp:
            gif_frames[0].save(
                gif_tmp,
                format="GIF",
                save_all=True,
                append_images=gif_frames[1:],
                duration=round(1000 / fps),
                loop=0,
            )
    return count
