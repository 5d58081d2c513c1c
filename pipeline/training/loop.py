"""The training loop every model shares: data, precision, EMA, checkpoints, NaN guard,
logging and sampling. A model only defines G, D and their losses (``pipeline.models``).

Every random number (latents, augmentation, noise inputs, mirroring, D's crops) comes from
one CPU generator drawn for the global batch, and the data order is a function of the step,
so a run resumed from a checkpoint is bit-identical on the CPU to one never interrupted, and
N processes compute what one process with the whole batch would.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline import io as pio
from pipeline.augment import BatchPart, diff_augment
from pipeline.errors import StageError
from pipeline.models import GANModel, build_model
from pipeline.models.base import NoiseSource, StepContext, set_noise_source
from pipeline.training.checkpoint import (
    all_finite,
    changed_keys,
    load_checkpoint,
    params_hash,
    save_checkpoint,
)
from pipeline.training.data import ImageDataset, StreamSampler, make_loader
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
GRID_SEED_OFFSET = 10_000  # fixed latents for sample grids: seed + this
NOISE_SEED_OFFSET = 20_000


@dataclass
class TrainState:
    step: int = 0  # optimizer steps of G so far
    nimg: int = 0  # real images shown to D so far
    lr_scale: float = 1.0  # lowered after repeated NaN steps
    bad_steps: int = 0  # consecutive steps with a non-finite loss or gradient
    recoveries: int = 0


class Trainer:
    def __init__(
        self,
        params: TrainParams,
        out_dir: str | Path = "data/train",
        live_dir: str | Path | None = "dvclive",
        model_factory: Callable[[TrainParams], GANModel] = build_model,
    ):
        self.p = params
        self.procs = init_processes(params.device)
        self.device = self.procs.device
        self.checkpoint_path = Path(out_dir) / "checkpoints" / CHECKPOINT_NAME
        if self.procs.is_main:
            pio.remove_partials(self.checkpoint_path.parent)  # a write a kill interrupted
        self.live_dir = live_dir
        self.dataset = ImageDataset(params.data)
        self.dataset.check(params.image_size)
        self.hash = params_hash(params, self.dataset.fingerprint())

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
        self.state = TrainState()
        self.resumed = self._restore()
        broadcast_module(self.model, self.procs.world)
        if self.device.type == "cuda" and params.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if params.compile:
            self.model.G.compile()
            self.model.D.compile()

    # -- checkpoints -------------------------------------------------------------------

    def _restore(self) -> bool:
        """Continue our own run, start from ``resume_from``'s weights, or start fresh."""
        path, resume_from = self.checkpoint_path, self.p.resume_from
        if path.exists():
            checkpoint = load_checkpoint(path)
            if checkpoint.get("params_hash") == self.hash:
                self._load(checkpoint)
                return True
            if not (resume_from and Path(resume_from).resolve() == path.resolve()):
                changed = changed_keys(checkpoint.get("params", {}), self.p.model_dump(mode="json"))
                what = ", ".join(changed) if changed else "the dataset"
                raise StageError(
                    f"{path} was trained with other params or data (changed: {what}); delete "
                    f"{path.parent} to start over, or set train.resume_from={path} to start "
                    "from its weights"
                )
        if resume_from:
            self._load_weights(load_checkpoint(resume_from), resume_from)
        return False

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
        self.generator.set_state(checkpoint["rng"]["engine"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self._apply_lr()

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
                        "model": self.p.model,
                        "image_size": self.p.image_size,
                        "latent_dim": self.model.latent_dim,
                        "params": self.p.model_dump(mode="json"),
                        "params_hash": self.hash,
                        "state": asdict(self.state),
                        "kimg": self.state.nimg / 1000,
                        "G": G,
                        "D": D,
                        "G_ema": G_ema,
                        "opt_G": self.opt_G.state_dict(),
                        "opt_D": self.opt_D.state_dict(),
                        "scaler_G": self.scaler_G.state_dict(),
                        "scaler_D": self.scaler_D.state_dict(),
                        "augment": {
                            "types": self.p.aug.types_at(self.state.step),
                            "prob": self.p.aug.prob,
                        },
                        "rng": {
                            "engine": self.generator.get_state(),
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all()
                            if torch.cuda.is_available()
                            else [],
                        },
                    },
                )
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
            ok = all(bool(torch.isfinite(g).all()) for g in grads)
        if ok:
            scaler.step(opt)  # with fp16, skips by itself on overflowed gradients
            scaler.update()
        opt.zero_grad(set_to_none=True)
        return ok

    def train_step(self, batches: Iterator[torch.Tensor]) -> tuple[bool, dict]:
        p, model = self.p, self.model
        types = p.aug.types_at(self.state.step)
        logs: dict[str, float] = {}

        def augment(images: torch.Tensor) -> torch.Tensor:
            return diff_augment(images, types, p.aug.prob, self.generator, self.part)

        losses = []
        for _ in range(p.accumulate):
            ctx = self._context(augment)
            real = self._real(next(batches), ctx)
            z = self._latents(ctx)
            with self.precision.autocast(self.device):
                with torch.no_grad():
                    fake = model.G(z)
                loss = model.d_loss(real, fake, ctx)
            self.scaler_D.scale(loss / p.accumulate).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
        d_ok = self._apply(model.D, self.opt_D, self.scaler_D, losses)

        losses = []
        model.D.requires_grad_(False)
        for _ in range(p.accumulate):
            ctx = self._context(augment)
            z = self._latents(ctx)
            with self.precision.autocast(self.device):
                loss = model.g_loss(model.G(z), ctx)
            self.scaler_G.scale(loss / p.accumulate).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
        model.D.requires_grad_(True)
        set_noise_source(model.G, None)
        g_ok = self._apply(model.G, self.opt_G, self.scaler_G, losses)

        self.state.step += 1
        self.state.nimg += p.batch_size
        if g_ok:
            update_ema(self.G_ema, model.G, ema_beta(p.ema, p.batch_size, self.state.nimg))
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
                    logs = all_reduce_mean(logs, self.procs.world, self.device)
                    logs.update(self._run_metrics(images_since / max(now - clock, 1e-9)))
                    clock, images_since = now, 0
                    last = logs
                    if logger:
                        logger.log(step, logs)
                if logger and (step % p.sample_every == 0 or done):
                    logger.image(step, self.sample_grid())
                if logger and (fid := self.cheap_fid()):
                    logger.log(step, fid)
                if step % p.checkpoint_every == 0 or done or stopping:
                    self.save()
                if progress:
                    progress(step, last)
                if stopping:
                    break
        finally:
            if logger:
                logger.close()
        return last

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
            "augment/prob": self.p.aug.prob,
            "speed/images_per_s": images_per_s,  # the global batch: all processes
        }
        if self.device.type == "cuda":
            metrics["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics


def train(
    params: TrainParams,
    out_dir: str | Path = "data/train",
    live_dir: str | Path | None = "dvclive",
    stop_at: int | None = None,
    model_factory: Callable[[TrainParams], GANModel] = build_model,
    progress: Callable | None = None,
) -> Trainer:
    """Train ``params.model`` on ``params.data``; resume from ``out_dir`` if it holds a
    checkpoint of the same params. Returns the trainer (its model, G_ema and state)."""
    trainer = Trainer(params, out_dir, live_dir, model_factory)
    trainer.last_logs = trainer.run(stop_at, progress)
    return trainer
