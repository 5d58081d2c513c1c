"""The faces stage's result cache: detections keyed by image sha256 + detector config.

SQLite (the standard library's) because it is exactly a keyed table that survives a kill:
each batch is one transaction, so a killed run loses at most the batch in flight, and a
new run, a changed threshold or a few new banners only compute what is not in it yet.
The cache is a memo, never a source of truth: deleting it costs only time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import StageError

Entry = tuple[list[list[float]], list[float]]  # boxes (x1 y1 x2 y2), scores

SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS detections (
    config TEXT NOT NULL,       -- configs.key: detector, weights digest, thresholds, sizes
    image TEXT NOT NULL,        -- sha256 of the image file
    resolution TEXT NOT NULL,   -- 'original' or '<size>:<resize mode>'
    boxes TEXT NOT NULL,        -- JSON [[x1, y1, x2, y2], ...] in that resolution's pixels
    scores TEXT NOT NULL,       -- JSON [score, ...], best first
    PRIMARY KEY (config, image, resolution)
);
"""


class ResultCache:
    """``with ResultCache(path) as cache:``; ``load`` one config, ``put`` and ``commit``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StageError(
                f"{self.path}: unreadable result cache ({exc}); delete it (it is only a "
                "cache) and run again"
            ) from None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def register(self, key: str, config: dict[str, Any]) -> None:
        """Record what a config key stands for (for people reading the cache)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO configs VALUES (?, ?)", (key, json.dumps(config))
            )

    def load(self, key: str) -> dict[tuple[str, str], Entry]:
        """Every cached result of one detector config: (image sha256, resolution) → entry."""
        try:
            rows = self._db.execute(
                "SELECT image, resolution, boxes, scores FROM detections WHERE config = ?",
                (key,),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StageError(
                f"{self.path}: unreadable result cache ({exc}); delete it and run again"
            ) from None
        out = {}
        for image, resolution, boxes, scores in rows:
            try:
                out[image, resolution] = (json.loads(boxes), json.loads(scores))
            except ValueError:
                continue  # a damaged row is computed again
        return out

    def put(self, key: str, rows: Iterable[tuple[str, str, Entry]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO detections VALUES (?, ?, ?, ?, ?)",
            [
                (key, image, resolution, json.dumps(boxes), json.dumps(scores))
                for image, resolution, (boxes, scores) in rows
            ],
        )

    def commit(self) -> None:
        self._db.commit()
