"""A run's files on disk, kept safe from DVC's checkout: every save is hard-linked into
``current/`` (no DVC output), a run DVC's checkout took away is put back, and a checkpoint of
other params or data is moved to ``superseded/<its params hash>/``, never deleted. The
training loop (``loop.Trainer``) calls these; they touch files only, in the main process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.training.checkpoint import (
    can_continue,
    changed_keys,
    defining_params,
    kind_of,
    load_checkpoint,
    safe_hash,
)
from pipeline.training.params import TrainParams

CHECKPOINT_NAME = "latest.pt"
KEEP_NAME = "current"  # hard links of the run's files, out of DVC's reach


def _file_digest(path: Path) -> str:
    """A folder name for a checkpoint whose own params hash is not a safe one."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


def _new_folder(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name.1``, ``name.2``… if taken: a folder
    no one else uses, so what is moved into it replaces nothing."""
    parent.mkdir(parents=True, exist_ok=True)
    for number in range(10_000):
        folder = parent / (name if number == 0 else f"{name}.{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise StageError(f"{parent}: no free folder name for {name}; clear out old runs there")


def _move(source: Path, target: Path) -> None:
    """Move a file or folder to a path that does not exist yet, then check it arrived."""
    if target.exists() or target.is_symlink():
        raise StageError(f"{target} exists; not replacing it (move it away and run again)")
    size = source.stat().st_size if source.is_file() else None
    os.rename(source, target)
    arrived = target.exists() and not source.exists()
    if not arrived or (size is not None and target.stat().st_size != size):
        raise StageError(f"moving {source} to {target} failed; both are left as they are")


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy of the bytes), or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _drop_links_to(link: Path, original: Path) -> None:
    """Remove ``link`` only if it is another name of ``original`` (nothing is lost)."""
    if link.exists() and original.exists() and os.path.samefile(link, original):
        link.unlink()


class RunArchive:
    """Where a run keeps its checkpoint (``checkpoint_path``), snapshots and their hard
    links (``keep_dir``); ``notices`` says what was set aside or put back, one line each.
    ``run_hash``, ``params`` and ``augment_kind`` are the run now starting."""

    def __init__(
        self,
        checkpoint_path: Path,
        snapshot_dir: Path,
        keep_dir: Path,
        run_hash: str,
        params: TrainParams,
        augment_kind: str,
    ):
        self.checkpoint_path, self.snapshot_dir, self.keep_dir = (
            checkpoint_path, snapshot_dir, keep_dir,
        )  # fmt: skip
        self.hash, self.params, self.augment_kind = run_hash, params, augment_kind
        self.notices: list[str] = []

    def recover_displaced(self) -> None:
        """Put back or set aside the run DVC's checkout took away.

        ``dvc exp run`` checks every output out by force before it runs: an output with no
        hash in dvc.lock (a run of ``steamgan train`` that DVC never recorded) is deleted,
        any other is replaced by the recorded version; ``persist`` does not prevent it. So
        every save is also hard-linked into ``current/`` (no DVC output): if the checkpoint
        there is no longer the one in ``checkpoints/``, it is this run's (put back, after
        setting aside what DVC checked out) or another's (set aside, like any other)."""
        kept = self.keep_dir / CHECKPOINT_NAME
        if not kept.exists():
            return
        path = self.checkpoint_path
        if path.exists() and os.path.samefile(kept, path):
            return
        checkpoint = load_checkpoint(kept)
        present = load_checkpoint(path) if path.exists() else None
        if not can_continue(checkpoint):
            return  # not a run's checkpoint: nothing to put back (_restore says what it is)
        if present is not None and not can_continue(present):
            self._put_back_over_weights(present, kept)
            return
        same_run = present is not None and present.get("params_hash") == checkpoint.get(
            "params_hash"
        )
        if same_run and present["state"]["step"] >= checkpoint["state"]["step"]:
            # the same run, as far or further (DVC re-linked it, or a kill came between a
            # save and its link): current/ is behind, and is refreshed
            self.link_snapshots(self.keep_dir / "snapshots", self.snapshot_dir)
            kept.unlink()
            self.keep()
            return
        if checkpoint.get("params_hash") != self.hash:
            self.set_aside(checkpoint, kept, self.keep_dir / "snapshots")
            return
        if present is not None:
            self.set_aside(present, path, self.snapshot_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        _link(kept, path)
        self.link_snapshots(self.keep_dir / "snapshots", self.snapshot_dir)
        self.notices.append(f"{path} put back from {kept} (DVC's checkout had replaced it)")

    def _put_back_over_weights(self, present: dict, kept: Path) -> None:
        """``checkpoints/latest.pt`` is weights only (``steamgan mix --out`` wrote over it)
        while ``current/`` still holds the run's checkpoint: move that file alone aside to
        ``superseded/`` (the snapshots stay: they are the run's) and put the run's back."""
        path = self.checkpoint_path
        archive = _new_folder(path.parent.parent / "superseded", _file_digest(path))
        _move(path, archive / CHECKPOINT_NAME)
        _link(kept, path)
        self.link_snapshots(self.keep_dir / "snapshots", self.snapshot_dir)
        self.notices.append(
            f"{path} was {kind_of(present)}, not a training checkpoint; moved to "
            f"{archive / CHECKPOINT_NAME}, and the run's checkpoint put back from {kept}"
        )

    @staticmethod
    def link_snapshots(source: Path, target: Path) -> None:
        """Hard-link every snapshot in ``source`` into ``target`` that is not there yet."""
        if not source.is_dir():
            return
        target.mkdir(parents=True, exist_ok=True)
        for snapshot in sorted(source.glob("step-*.pt")):
            if not (target / snapshot.name).exists():
                _link(snapshot, target / snapshot.name)

    def keep(self) -> None:
        """Hard-link the checkpoint and snapshots into ``current/``, where DVC's checkout
        cannot take them (see ``recover_displaced``); costs no disk space."""
        if not self.checkpoint_path.exists():
            return
        kept = self.keep_dir / CHECKPOINT_NAME
        if not (kept.exists() and os.path.samefile(kept, self.checkpoint_path)):
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            with pio.atomic_path(kept) as tmp:
                tmp.unlink()
                _link(self.checkpoint_path, tmp)
        self.link_snapshots(self.snapshot_dir, self.keep_dir / "snapshots")

    def set_aside(self, checkpoint: dict, path: Path, snapshots: Path) -> None:
        """Another run's checkpoint (other params or data, as after ``dvc exp run -S
        train.…``, which checks the last one out): move it and its snapshots to
        ``superseded/<its params hash>/`` and start a new run. Nothing is lost, and that
        folder is no DVC output, so it does not grow the cache. Main process only.

        The folder's name comes from the checkpoint only if it is a well-formed hash (else
        from the file's own digest), and it is always a new folder (``<hash>.1``, … if
        the name is taken), so nothing there is ever replaced or deleted. Links in
        ``current/`` to what was moved are dropped (the files live on in the archive)."""
        old = checkpoint.get("params", {})
        old_kind = (checkpoint.get("augment") or {}).get("kind", self.augment_kind)
        new = self.params.model_dump(mode="json")
        changed = changed_keys(
            defining_params(old, old_kind) if isinstance(old, dict) else {},
            defining_params(new, self.augment_kind),
        )
        what = ", ".join(changed)[:300] if changed else "the dataset"
        name = safe_hash(checkpoint.get("params_hash")) or _file_digest(path)
        archive = _new_folder(self.checkpoint_path.parent.parent / "superseded", name)
        _move(path, archive / CHECKPOINT_NAME)
        if snapshots.exists():
            _move(snapshots, archive / "snapshots")
        _drop_links_to(self.keep_dir / CHECKPOINT_NAME, archive / CHECKPOINT_NAME)
        for snapshot in sorted((self.keep_dir / "snapshots").glob("step-*.pt")):
            _drop_links_to(snapshot, archive / "snapshots" / snapshot.name)
        self.notices.append(
            f"{path} was trained with other params or data (changed: {what}); "
            f"moved to {archive}, starting a new run (train.resume_from="
            f"{archive / CHECKPOINT_NAME} starts from its weights)"
        )
