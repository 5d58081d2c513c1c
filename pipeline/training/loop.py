"""The training loop every model shares: data, precision, EMA, checkpoints, NaN guard,
logging and sampling. A model only defines G, D and their losses (``pipeline.models``).

Every random number (latents, augmentation, noise inputs, mirroring, D's crops) comes from
one CPU generator drawn for the global batch, and the data order is a function of the step,
so a run resumed from a checkpoint is bit-identical on the CPU to one never interrupted, and
N processes compute what one process with the whole batch would.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline import io as pio
from pipeline.augment import BatchPart, ada_augment, diff_augment
from pipeline.errors import StageError
from pipeline.models import GANModel, build_model
from pipeline.models.base import NoiseSource, StepContext, set_noise_source
from pipeline.training.checkpoint import (
    all_finite,
    changed_keys,
    defining_params,
    load_checkpoint,
    params_hash,
    safe_hash,
    save_checkpoint,
)
from pipeline.training.data import ImageDataset, StreamSampler, make_loader, skipped_line
from pipeline.training.distributed import (
    all_reduce_mean,
    average_gradients,
    barrier,
    broadcast_module,
    cross_process_batchnorm,
    init_processes,
)
from pipeline.training.ema import ema_beta, update_ema
from pipeline.training.logger import TrainLogger
from pipeline.training.params import TrainParams
from pipeline.training.precision import resolve_precision
from pipeline.training.sampling import fixed_latents, generate, image_grid

CHECKPOINT_NAME = "latest.pt"
KEEP_NAME = "current"  # hard links of the run's files, out of DVC's reach
DATASET_CHECK_NAME = "dataset-check.json"  # which images decode, per dataset content
GRID_SEED_OFFSET = 10_000  # fixed latents for sample grids: seed + this
NOISE_SEED_OFFSET = 20_000


@dataclass
class TrainState:
    step: int = 0  # optimizer steps of G so far
    nimg: int = 0  # real images shown to D so far
    lr_scale: float = 1.0  # lowered after repeated NaN steps
    bad_steps: int = 0  # consecutive steps with a non-finite loss or gradient
    recoveries: int = 0
    ada_p: float = 0.0  # adaptive augmentation strength
    ada_sign_sum: float = 0.0  # sum of sign(D(real)) since p was last adjusted
    ada_count: int = 0  # and how many outputs that sum covers


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


def as_floats(logs: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Logged values as floats, with one device sync for all the tensors among them."""
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([logs[k].float().reshape(()) for k in keys]).tolist() if keys else []
    return {**logs, **dict(zip(keys, values, strict=True))}


class Trainer:
    def __init__(
        self,
        params: TrainParams,
        out_dir: str | Path = "data/train",
        live_dir: str | Path | None = None,
        model_factory: Callable[[TrainParams], GANModel] = build_model,
    ):
        self.p = params
        self.procs = init_processes(params.device)
        self.device = self.procs.device
        self.checkpoint_path = Path(out_dir) / "checkpoints" / CHECKPOINT_NAME
        self.snapshot_dir = Path(out_dir) / "snapshots"
        self.keep_dir = Path(out_dir) / KEEP_NAME
        if self.procs.is_main:
            pio.remove_partials(self.checkpoint_path.parent)  # a write a kill interrupted
            pio.remove_partials(self.snapshot_dir)
            pio.remove_partials(self.keep_dir)
        self.live_dir = live_dir
        self.dataset = ImageDataset(params.data)
        record = Path(out_dir) / DATASET_CHECK_NAME
        skipped = self.dataset.check(params.image_size, record if self.procs.is_main else None)
        self.dataset_notice = skipped_line(self.dataset.path, skipped, record) if skipped else ""

        micro = params.batch_size // params.accumulate
        if micro % self.procs.world:
            raise StageError(
                f"train.batch_size / train.accumulate = {micro} is not divisible by the "
                f"{self.procs.world} processes"
            )
        self.micro_global, self.micro_local = micro, micro // self.procs.world
        # this process's rows of every global micro-batch
        self.part = BatchPart(micro, self.procs.rank * self.micro_local)

        torch.manual_seed(params.seed)  # the same initial weights in every process
        try:
            self.model = model_factory(params).to(self.device)
        except ValueError as exc:
            raise StageError(str(exc)) from None
        self.G_ema = copy.deepcopy(self.model.G).eval().requires_grad_(False)
        if self.procs.world > 1:
            cross_process_batchnorm(self.model, self.device)
        self.opt_G, self.opt_D = self.model.optimizers()
        self.base_lrs = [[g["lr"] for g in opt.param_groups] for opt in (self.opt_G, self.opt_D)]
        self.precision = resolve_precision(params.precision, self.device)
        self.scaler_G = self.precision.scaler(self.device)
        self.scaler_D = self.precision.scaler(self.device)
        self.generator = torch.Generator().manual_seed(params.seed + 1)
        self.augment_kind = (
            self.model.default_augment if params.augment == "auto" else params.augment
        )
        self.hash = params_hash(params, self.dataset.fingerprint(), self.augment_kind)
        ada = params.ada
        self.state = TrainState(ada_p=ada.fixed_p if ada.fixed_p is not None else ada.initial_p)
        # sign(D(real)) sum and count since the last adjustment, on the device (no sync);
        # the state's copy is written at save time and read back by _load
        self.ada_stats = torch.zeros(2, device=self.device)
        self.resumed = self._restore()
        broadcast_module(self.model, self.procs.world)
        if self.device.type == "cuda" and params.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if params.compile:
            self.model.G.compile()
            self.model.D.compile()

    # -- checkpoints -------------------------------------------------------------------

    def _restore(self) -> bool:
        """Continue our own run, start from ``resume_from``'s weights, or start fresh.

        Another run's checkpoint is set aside only once ``resume_from`` (if any) has loaded:
        a bad ``resume_from`` stops the stage with everything where it was."""
        path, resume_from = self.checkpoint_path, self.p.resume_from
        self.notices: list[str] = []
        if self.procs.is_main:
            self._recover_displaced()
        barrier(self.procs.world)
        other = None
        if path.exists():
            checkpoint = load_checkpoint(path)
            if checkpoint.get("params_hash") == self.hash:
                self._load(checkpoint)
                return True
            if not (resume_from and Path(resume_from).resolve() == path.resolve()):
                other = checkpoint
        if resume_from:
            self._load_weights(load_checkpoint(resume_from), resume_from)
        if other is not None:
            if self.procs.is_main:
                self._set_aside(other, path, self.snapshot_dir)
            barrier(self.procs.world)
        return False

    @property
    def notice(self) -> str:
        """What happened to checkpoints found at the start (set aside, put back), one line."""
        return "; ".join(self.notices)

    def _recover_displaced(self) -> None:
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
        same_run = present is not None and present.get("params_hash") == checkpoint.get(
            "params_hash"
        )
        if same_run and present["state"]["step"] >= checkpoint["state"]["step"]:
            # the same run, as far or further (DVC re-linked it, or a kill came between a
            # save and its link): current/ is behind, and is refreshed
            self._link_snapshots(self.keep_dir / "snapshots", self.snapshot_dir)
            kept.unlink()
            self._keep()
            return
        if checkpoint.get("params_hash") != self.hash:
            self._set_aside(checkpoint, kept, self.keep_dir / "snapshots")
            return
        if present is not None:
            self._set_aside(present, path, self.snapshot_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        _link(kept, path)
        self._link_snapshots(self.keep_dir / "snapshots", self.snapshot_dir)
        self.notices.append(f"{path} put back from {kept} (DVC's checkout had replaced it)")

    def _link_snapshots(self, source: Path, target: Path) -> None:
        """Hard-link every snapshot in ``source`` into ``target`` that is not there yet."""
        if not source.is_dir():
            return
        target.mkdir(parents=True, exist_ok=True)
        for snapshot in sorted(source.glob("step-*.pt")):
            if not (target / snapshot.name).exists():
                _link(snapshot, target / snapshot.name)

    def _keep(self) -> None:
        """Hard-link the checkpoint and snapshots into ``current/``, where DVC's checkout
        cannot take them (see ``_recover_displaced``); costs no disk space."""
        if not self.procs.is_main or not self.checkpoint_path.exists():
            return
        kept = self.keep_dir / CHECKPOINT_NAME
        if not (kept.exists() and os.path.samefile(kept, self.checkpoint_path)):
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            with pio.atomic_path(kept) as tmp:
                tmp.unlink()
                _link(self.checkpoint_path, tmp)
        self._link_snapshots(self.snapshot_dir, self.keep_dir / "snapshots")

    def _set_aside(self, checkpoint: dict, path: Path, snapshots: Path) -> None:
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
        new = self.p.model_dump(mode="json")
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

    def _load_weights(self, checkpoint: dict, source: str) -> None:
        try:
            self.model.G.load_state_dict(checkpoint["G"])
            self.model.D.load_state_dict(checkpoint["D"])
            self.G_ema.load_state_dict(checkpoint["G_ema"])
        except (KeyError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise StageError(
                f"train.resume_from: {source} does not fit this model ({first})"
            ) from None

    def _load(self, checkpoint: dict) -> None:
        self._load_weights(checkpoint, str(self.checkpoint_path))
        self.opt_G.load_state_dict(checkpoint["opt_G"])
        self.opt_D.load_state_dict(checkpoint["opt_D"])
        self.scaler_G.load_state_dict(checkpoint["scaler_G"])
        self.scaler_D.load_state_dict(checkpoint["scaler_D"])
        self.state = TrainState(**checkpoint["state"])
        self.ada_stats = torch.tensor(
            [self.state.ada_sign_sum, self.state.ada_count], device=self.device
        )
        self.generator.set_state(checkpoint["rng"]["engine"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self._apply_lr()

    def _header(self) -> dict:
        """What a sampler needs to rebuild G (``checkpoint.load_generator``)."""
        sign_sum, count = self.ada_stats.tolist()
        self.state.ada_sign_sum, self.state.ada_count = sign_sum, int(count)
        return {
            "model": self.p.model,
            "image_size": self.p.image_size,
            "latent_dim": self.model.latent_dim,
            "params": self.p.model_dump(mode="json"),
            "params_hash": self.hash,
            "state": asdict(self.state),
            "kimg": self.state.nimg / 1000,
        }

    def save_snapshot(self) -> None:
        """G_ema alone, kept for every ``snapshot_every`` steps: a run's history."""
        G_ema = self.G_ema.state_dict()
        if self.procs.is_main and all_finite(G_ema):
            path = self.snapshot_dir / f"step-{self.state.step:08d}.pt"
            save_checkpoint(path, {**self._header(), "G_ema": G_ema})

    def save(self) -> bool:
        """Write the checkpoint (main process); refuse to write non-finite weights."""
        saved = True
        if self.procs.is_main:
            G, D = self.model.G.state_dict(), self.model.D.state_dict()
            G_ema = self.G_ema.state_dict()
            saved = all(all_finite(s) for s in (G, D, G_ema))
            if saved:
                save_checkpoint(
                    self.checkpoint_path,
                    {
                        **self._header(),
                        "G": G,
                        "D": D,
                        "G_ema": G_ema,
                        "opt_G": self.opt_G.state_dict(),
                        "opt_D": self.opt_D.state_dict(),
                        "scaler_G": self.scaler_G.state_dict(),
                        "scaler_D": self.scaler_D.state_dict(),
                        "augment": {"kind": self.augment_kind, **self._augment_state()},
                        "rng": {
                            "engine": self.generator.get_state(),
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all()
                            if torch.cuda.is_available()
                            else [],
                        },
                    },
                )
                self._keep()
        barrier(self.procs.world)
        return saved

    # -- one step ----------------------------------------------------------------------

    def _apply_lr(self) -> None:
        for opt, lrs in zip((self.opt_G, self.opt_D), self.base_lrs, strict=True):
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr * self.state.lr_scale

    def _context(self, augment: Callable) -> StepContext:
        set_noise_source(self.model.G, NoiseSource(self.generator, self.part, self.micro_local))
        return StepContext(self.generator, self.part, self.micro_local, augment)

    def _latents(self, ctx: StepContext) -> torch.Tensor:
        z = torch.randn((ctx.part.total, self.model.latent_dim), generator=self.generator)
        return z[ctx.part.start : ctx.part.start + ctx.rows].to(self.device)

    def _real(self, batch: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        real = batch.to(self.device, non_blocking=True).float() / 127.5 - 1
        if self.p.mirror:
            flip = ctx.draw(1, 1, 1).to(self.device) < 0.5
            real = torch.where(flip, real.flip(3), real)
        if self.device.type == "cuda" and self.p.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def _everywhere(self, flag: bool) -> bool:
        """True only if ``flag`` holds in every process."""
        if self.procs.world == 1:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def _apply(self, module: nn.Module, opt, scaler, losses: list[torch.Tensor]) -> bool:
        """Average gradients, then step unless a loss or gradient is not finite."""
        average_gradients(module, self.procs.world)
        ok = self._everywhere(bool(torch.isfinite(torch.stack(losses)).all()))
        if ok and not scaler.is_enabled():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            # one sync for all gradients (a GradScaler checks them itself)
            ok = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if ok:
            scale = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(opt)  # with fp16, skips by itself on overflowed gradients
            scaler.update()
            # A GradScaler that skipped lowered its scale: that step did not happen, so it
            # is not counted as good (no EMA update, a bad step towards nan_tolerance).
            ok = scale is None or scaler.get_scale() >= scale
        opt.zero_grad(set_to_none=True)
        return ok

    def _augment_state(self) -> dict:
        if self.augment_kind == "diffaugment":
            return {"types": self.p.aug.types_at(self.state.step), "prob": self.p.aug.prob}
        if self.augment_kind == "ada":
            return {"stages": self.p.ada.stages, "prob": self.state.ada_p}
        return {"prob": 0.0}

    def _augmenter(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """D's augmentation for this step (the same for reals and fakes)."""
        p, kind = self.p, self.augment_kind
        if kind == "diffaugment":
            types = p.aug.types_at(self.state.step)
            return lambda x: diff_augment(x, types, p.aug.prob, self.generator, self.part)
        if kind == "ada":
            prob = self.state.ada_p
            return lambda x: ada_augment(x, prob, self.generator, self.part, p.ada.stages)
        return lambda x: x

    def _adjust_ada(self, logs: dict[str, float]) -> None:
        """Every ``ada.interval`` steps move p towards r_t = E[sign(D(real))] = target, at a
        speed that would take p from 0 to 1 in ``ada.speed_kimg``."""
        ada = self.p.ada
        if self.augment_kind != "ada" or ada.fixed_p is not None:
            return
        if self.state.step % ada.interval:
            return
        stats = self.ada_stats.clone()
        if self.procs.world > 1:
            dist.all_reduce(stats)
        sign_sum, count = stats.tolist()
        self.ada_stats.zero_()
        if count == 0:
            return
        r_t = sign_sum / count
        step = self.p.batch_size * ada.interval / (ada.speed_kimg * 1000)
        direction = (r_t > ada.target) - (r_t < ada.target)
        self.state.ada_p = min(max(self.state.ada_p + direction * step, 0.0), 1.0)
        logs["augment/r_t"] = r_t

    def _observe_real_logits(self, logits: torch.Tensor) -> None:
        """Gather sign(D(real)) for ADA's p, from what every model's ``d_loss`` returns (the
        engine's job, so no model can forget it); summed on the device, no sync."""
        if self.augment_kind != "ada":
            return
        logits = logits.detach().float()
        self.ada_stats += torch.stack(
            [logits.sign().sum(), self.ada_stats.new_tensor(logits.numel())]
        )

    def _d_phase(self, batches, augment, logs) -> tuple[bool, list[torch.Tensor]]:
        p, model = self.p, self.model
        losses, reals = [], []
        for _ in range(p.accumulate):
            ctx = self._context(augment)
            real = self._real(next(batches), ctx)
            reals.append(real)
            z = self._latents(ctx)
            with self.precision.autocast(self.device):
                with torch.no_grad():
                    fake = model.generate(z, ctx)
                outcome = model.d_loss(real, fake, ctx)
                loss = outcome.loss
            self.scaler_D.scale(loss / p.accumulate).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
            self._observe_real_logits(outcome.real_logits)
        return self._apply(model.D, self.opt_D, self.scaler_D, losses), reals

    def _reg_phase(self, module, opt, scaler, loss_fn, rounds, augment, logs) -> bool:
        """A lazy-regularisation step: its own backward and optimizer step."""
        losses = []
        for round_ in range(rounds):
            ctx = self._context(augment)
            with self.precision.autocast(self.device):
                loss = loss_fn(round_, ctx)
            scaler.scale(loss / rounds).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
        return self._apply(module, opt, scaler, losses)

    def train_step(self, batches: Iterator[torch.Tensor]) -> tuple[bool, dict]:
        p, model, step = self.p, self.model, self.state.step
        augment = self._augmenter()
        logs: dict[str, float] = {}

        d_ok, reals = self._d_phase(batches, augment, logs)
        if model.d_reg_interval and step % model.d_reg_interval == 0:
            d_ok &= self._reg_phase(
                model.D,
                self.opt_D,
                self.scaler_D,
                lambda i, ctx: model.d_reg_loss(reals[i], ctx),
                p.accumulate,
                augment,
                logs,
            )

        losses = []
        trainable = [param.requires_grad for param in model.D.parameters()]
        model.D.requires_grad_(False)
        for _ in range(p.accumulate):
            ctx = self._context(augment)
            z = self._latents(ctx)
            with self.precision.autocast(self.device):
                loss = model.g_loss(model.generate(z, ctx), ctx)
            self.scaler_G.scale(loss / p.accumulate).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
        g_ok = self._apply(model.G, self.opt_G, self.scaler_G, losses)
        if model.g_reg_interval and step % model.g_reg_interval == 0:
            g_ok &= self._reg_phase(
                model.G,
                self.opt_G,
                self.scaler_G,
                lambda i, ctx: model.g_reg_loss(ctx),
                p.accumulate,
                augment,
                logs,
            )
        for param, flag in zip(model.D.parameters(), trainable, strict=True):
            param.requires_grad_(flag)  # frozen layers (freeze_d) stay frozen
        set_noise_source(model.G, None)

        self.state.step += 1
        self.state.nimg += p.batch_size
        if g_ok:
            update_ema(self.G_ema, model.G, ema_beta(p.ema, p.batch_size, self.state.nimg))
        self._adjust_ada(logs)
        logs["loss/finite"] = float(d_ok and g_ok)
        return d_ok and g_ok, logs

    # -- the run -----------------------------------------------------------------------

    def _batches(self) -> Iterator[torch.Tensor]:
        sampler = StreamSampler(
            len(self.dataset),
            self.micro_global,
            self.p.seed,
            self.procs.rank,
            self.procs.world,
            start=self.state.step * self.p.accumulate,
        )
        return make_loader(self.dataset, sampler, self.p.workers, self.device.type == "cuda")

    def _recover(self) -> None:
        """Too many bad steps in a row: back to the last checkpoint with a lower lr."""
        lr_scale = self.state.lr_scale * self.p.nan_lr_factor
        recoveries = self.state.recoveries + 1
        self._load(load_checkpoint(self.checkpoint_path))
        self.state.lr_scale, self.state.recoveries, self.state.bad_steps = lr_scale, recoveries, 0
        self._apply_lr()

    def sample_grid(self):
        rows, cols = self.p.grid
        z = fixed_latents(rows * cols, self.model.latent_dim, self.p.seed + GRID_SEED_OFFSET)
        images = generate(self.G_ema, z, self.p.seed + NOISE_SEED_OFFSET, self.device)
        return image_grid(images, rows, cols)

    def run(self, stop_at: int | None = None, progress: Callable | None = None) -> dict:
        """Train to ``params.steps`` (or stop after the checkpoint at ``stop_at``, for tests
        of resuming); return the last logged values."""
        p = self.p
        if self.procs.is_main:  # a DVC output even with snapshot_every: null
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        if not self.checkpoint_path.exists():
            self.save()  # a starting point for NaN recovery
        logger = (
            TrainLogger(self.live_dir, self.resumed, self.state.step)
            if self.procs.is_main
            else None
        )
        batches = self._batches()
        last: dict[str, float] = {}
        clock, images_since = time.perf_counter(), 0
        if progress:
            progress(self.state.step, last)
        try:
            while self.state.step < p.steps:
                ok, logs = self.train_step(batches)
                images_since += p.batch_size
                self.state.bad_steps = 0 if ok else self.state.bad_steps + 1
                if self.state.bad_steps >= p.nan_tolerance:
                    self._recover()
                    batches = self._batches()
                    continue
                step, done = self.state.step, self.state.step >= p.steps
                stopping = stop_at is not None and step >= stop_at
                if step % p.log_every == 0 or done or stopping:
                    now = time.perf_counter()
                    logs = all_reduce_mean(as_floats(logs), self.procs.world, self.device)
                    logs.update(self._run_metrics(images_since / max(now - clock, 1e-9)))
                    clock, images_since = now, 0
                    last = logs
                    if logger:
                        logger.log(step, logs)
                if logger and (step % p.sample_every == 0 or done):
                    logger.image(step, self.sample_grid())
                if p.snapshot_every and (step % p.snapshot_every == 0 or done):
                    self.save_snapshot()
                if logger and (fid := self.cheap_fid()):
                    logger.log(step, fid)
                if step % p.checkpoint_every == 0 or done or stopping:
                    saved = self.save()
                    if not saved and (done or stopping):  # never end on a stale checkpoint
                        raise StageError(self._unsaved_line())
                if progress:
                    progress(step, last)
                if stopping:
                    break
        finally:
            if logger:
                logger.close()
        return last

    def _unsaved_line(self) -> str:
        """Why the run ends without its last checkpoint, and what is on disk instead."""
        on_disk = "none"
        if self.checkpoint_path.exists():
            on_disk = f"step {load_checkpoint(self.checkpoint_path)['state']['step']:,}"
        return (
            f"the weights at step {self.state.step:,} are not finite, so {self.checkpoint_path} "
            f"was not written (it holds {on_disk}); lower the learning rate or "
            f"train.nan_tolerance and run again"
        )

    def cheap_fid(self) -> dict[str, float]:
        """FID of G_ema when this step crossed a multiple of ``train.eval_every`` kimg (0:
        never), on ``train.eval_images`` images (``pipeline.metrics.training``)."""
        every = round(self.p.eval_every * 1000)
        if not every or self.state.nimg % every >= self.p.batch_size:
            return {}
        from pipeline.metrics.training import TrainingFID  # Inception: only when asked for

        if getattr(self, "_fid", None) is None:
            self._fid = TrainingFID(self.dataset, self.p.eval_images, self.device)
        return self._fid(self.G_ema, self.model.latent_dim, self.p.seed)

    def _run_metrics(self, images_per_s: float) -> dict[str, float]:
        metrics = {
            "kimg": self.state.nimg / 1000,
            "lr/G": self.opt_G.param_groups[0]["lr"],
            "lr/D": self.opt_D.param_groups[0]["lr"],
            "augment/prob": self._augment_state()["prob"],
            "speed/images_per_s": images_per_s,  # the global batch: all processes
        }
        if self.device.type == "cuda":
            metrics["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics


def train(
    params: TrainParams,
    out_dir: str | Path = "data/train",
    live_dir: str | Path | None = None,
    stop_at: int | None = None,
    model_factory: Callable[[TrainParams], GANModel] = build_model,
    progress: Callable | None = None,
) -> Trainer:
    """Train ``params.model`` on ``params.data``; resume from ``out_dir`` if it holds a
    checkpoint of the same params. Returns the trainer (its model, G_ema and state)."""
    trainer = Trainer(params, out_dir, live_dir, model_factory)
    trainer.last_logs = trainer.run(stop_at, progress)
    return trainer
