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
from torch import nn

from pipeline import io as pio
from pipeline.augment import Augmenter, BatchPart
from pipeline.errors import StageError, first_line
from pipeline.models import build_model
from pipeline.models.base import (
    Batch,
    DLoss,
    GANModel,
    NoiseSource,
    StepContext,
    set_noise_source,
    with_modules,
)
from pipeline.training.checkpoint import (
    all_finite,
    can_continue,
    kind_of,
    load_checkpoint,
    params_hash,
    save_checkpoint,
)
from pipeline.training.data import ImageDataset, StreamSampler, make_loader, skipped_line
from pipeline.training.distributed import (
    all_reduce_mean,
    all_true,
    average_gradients,
    barrier,
    broadcast_module,
    cross_process_batchnorm,
    init_processes,
)
from pipeline.training.ema import OTHERS_KEY, ema_beta, ema_entries, ema_state, update_ema
from pipeline.training.logger import GradientFlow, TrainLogger
from pipeline.training.params import TrainParams
from pipeline.training.precision import resolve_precision
from pipeline.training.runs import CHECKPOINT_NAME, KEEP_NAME, RunArchive
from pipeline.training.sampling import fixed_latents, generate, image_grid

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
        self.params = params
        self.procs = init_processes(params.device)
        self.device = self.procs.device
        if self.device.type == "cuda":
            # Image sizes are fixed within a run (a growing model changes them a few times):
            # let cuDNN time its algorithms once per shape instead of taking its heuristic's
            # pick, as NVlabs' training loop does. CUDA training is not bit-exact anyway.
            torch.backends.cudnn.benchmark = True
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

        # class names of a labelled dataset (dataset.labels): the batches then carry labels
        self.dataset_classes = list(getattr(self.dataset, "classes", None) or [])
        if self.dataset_classes:
            self.dataset.with_labels = True
        if params.balance_classes and not self.dataset_classes:
            raise StageError(
                f"train.balance_classes: {self.dataset.path} has no labels; build it with "
                "dataset.labels: tags or folders, or set train.balance_classes=false"
            )

        torch.manual_seed(params.seed)  # the same initial weights in every process
        try:
            classes = len(self.dataset_classes)
            model = model_factory(params, num_classes=classes) if classes else model_factory(params)
            self.model = model.to(self.device)
        except ValueError as exc:
            raise StageError(str(exc)) from None
        # moving averages of the networks the model samples with (G's is ``G_ema``)
        self.ema = {
            name: copy.deepcopy(module).eval().requires_grad_(False)
            for name, module in self.model.ema_modules().items()
        }
        self.G_ema = self.ema["G"]
        if self.procs.world > 1:
            cross_process_batchnorm(self.model, self.device)
        self.optimizers = self.model.optimizers()
        d_names = tuple(self.model.d_optimizers)
        g_names = self.model.g_optimizers or tuple(n for n in self.optimizers if n not in d_names)
        unknown = sorted(set(d_names + g_names) - set(self.optimizers))
        if unknown:
            raise StageError(f"train.model {params.model}: no optimizer named {unknown[0]}")
        self.phase_optimizers = {"D": d_names, "G": g_names}
        self.gradient_flow = GradientFlow(self.model.trained_modules(), self._phase_params)
        self.base_lrs = {
            name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()
        }
        self.precision = resolve_precision(params.precision, self.device)
        self.scalers = {phase: self.precision.scaler(self.device) for phase in ("G", "D")}
        self.generator = torch.Generator().manual_seed(params.seed + 1)
        self.augment_kind = (
            self.model.default_augment if params.augment == "auto" else params.augment
        )
        self.augmenter = Augmenter(
            self.augment_kind, params.aug, params.ada, params.batch_size, self.device,
            self.procs.world,
        )  # fmt: skip
        self.hash = params_hash(params, self.dataset.fingerprint(), self.augment_kind)
        self.archive = RunArchive(
            self.checkpoint_path, self.snapshot_dir, self.keep_dir, self.hash, params,
            self.augment_kind,
        )  # fmt: skip
        self.state = TrainState(ada_p=self.augmenter.p)
        self.resumed = self._restore()
        self._fid = None  # the cheap FID (train.eval_every): built when first due
        broadcast_module(self.model, self.procs.world)
        if self.device.type == "cuda" and params.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if params.compile:  # every trained network (StarGAN v2's mapping and style encoder too)
            for module in self.model.trained_modules().values():
                module.compile()

    # the two classic optimizers and scalers by their old names
    opt_G = property(lambda self: self.optimizers["G"])
    opt_D = property(lambda self: self.optimizers["D"])
    scaler_G = property(lambda self: self.scalers["G"])
    scaler_D = property(lambda self: self.scalers["D"])

    # -- checkpoints -------------------------------------------------------------------

    def _restore(self) -> bool:
        """Continue our own run, start from ``resume_from``'s weights, or start fresh.

        Another run's checkpoint is set aside only once ``resume_from`` (if any) has loaded:
        a bad ``resume_from`` stops the stage with everything where it was."""
        path, resume_from = self.checkpoint_path, self.params.resume_from
        if self.procs.is_main:
            self.archive.recover_displaced()
        barrier(self.procs.world)
        other = None
        if path.exists():
            checkpoint = load_checkpoint(path)
            if checkpoint.get("params_hash") == self.hash:
                if not can_continue(checkpoint):
                    raise StageError(
                        f"{path}: {kind_of(checkpoint)}, not a training checkpoint: it has "
                        "no optimizer or RNG state to continue this run from; move it away "
                        "to start a new run (train.resume_from=<its new path> starts from "
                        "its weights)"
                    )
                self._load(checkpoint)
                return True
            if not (resume_from and Path(resume_from).resolve() == path.resolve()):
                other = checkpoint
        if resume_from:
            self._load_weights(load_checkpoint(resume_from), resume_from)
        if other is not None:
            if self.procs.is_main:
                self.archive.set_aside(other, path, self.snapshot_dir)
            barrier(self.procs.world)
        return False

    def run_info(self) -> dict:
        """What this run is, resolved (``auto`` settings as they came out): the train stage
        prints it and writes it to ``data/train/run.json``, which the report reads."""
        params, state = self.params, self.state
        classes = list(self.dataset_classes)
        conditional = bool(self.model.num_classes)  # on its classes (or domains)
        return {
            "model": params.model,
            "parameters": {
                "G": sum(t.numel() for t in self.model.G.parameters()),
                "D": sum(t.numel() for t in self.model.D.parameters()),
            },
            "image_size": params.image_size,
            "dataset": {"path": str(self.dataset.path), "images": len(self.dataset)},
            "classes": classes if conditional else [],
            "device": str(self.device),
            "processes": self.procs.world,
            "precision": self.precision.name,
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "workers": params.workers,
            "batch_size": params.batch_size,
            "steps": params.steps,
            "augment": self.augment_kind,
            "resumed_at_step": state.step if self.resumed else None,
            "params_hash": self.hash,
        }

    @property
    def notice(self) -> str:
        """What happened to checkpoints found at the start (set aside, put back), one line."""
        return "; ".join(self.archive.notices)

    def _load_weights(self, checkpoint: dict, source: str, key: str = "train.resume_from") -> None:
        """Load the networks; ``key`` names where ``source`` came from in the message."""
        try:
            for name, module in self.model.trained_modules().items():
                module.load_state_dict(checkpoint[name])
            for name, module in self.ema.items():
                module.load_state_dict(ema_state(checkpoint, name))
        except (KeyError, RuntimeError) as exc:
            first = first_line(exc)
            raise StageError(f"{key}: {source} does not fit this model ({first})") from None

    def _load(self, checkpoint: dict) -> None:
        self._load_weights(checkpoint, str(self.checkpoint_path), "the run's checkpoint")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint[f"opt_{name}"])
        for phase, scaler in self.scalers.items():
            scaler.load_state_dict(checkpoint[f"scaler_{phase}"])
        self.state = TrainState(**checkpoint["state"])
        self.augmenter.load_state_dict(
            {"p": self.state.ada_p, "sign_sum": self.state.ada_sign_sum,
             "count": self.state.ada_count}
        )  # fmt: skip
        self.generator.set_state(checkpoint["rng"]["engine"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self._apply_lr()

    def _header(self) -> dict:
        """What a sampler needs to rebuild G (``checkpoint.load_generator``)."""
        augment = self.augmenter.state_dict()
        self.state.ada_p = augment["p"]
        self.state.ada_sign_sum, self.state.ada_count = augment["sign_sum"], augment["count"]
        return {
            "model": self.params.model,
            "image_size": self.params.image_size,
            "latent_dim": self.model.latent_dim,
            "params": self.params.model_dump(mode="json"),
            "params_hash": self.hash,
            "state": asdict(self.state),
            "kimg": self.state.nimg / 1000,
            "classes": self.dataset_classes,
        }

    def _ema_states(self) -> dict[str, dict]:
        """The averaged networks as checkpoint entries (``ema.ema_entries``)."""
        return ema_entries({name: module.state_dict() for name, module in self.ema.items()})

    @staticmethod
    def _finite(states: dict[str, dict]) -> bool:
        return all(
            all(all_finite(s) for s in state.values()) if name == OTHERS_KEY else all_finite(state)
            for name, state in states.items()
        )

    def save_snapshot(self) -> None:
        """The averaged networks alone, kept every ``snapshot_every`` steps: a run's history
        (what render's progress strip and ``steamgan mix`` read)."""
        ema = self._ema_states()
        if self.procs.is_main and self._finite(ema):
            path = self.snapshot_dir / f"step-{self.state.step:08d}.pt"
            save_checkpoint(path, {**self._header(), **ema})

    def save(self) -> bool:
        """Write the checkpoint (main process); refuse to write non-finite weights."""
        saved = True
        if self.procs.is_main:
            networks = {
                name: module.state_dict() for name, module in self.model.trained_modules().items()
            }
            networks.update(self._ema_states())
            saved = self._finite(networks)
            if saved:
                save_checkpoint(
                    self.checkpoint_path,
                    {
                        **self._header(),
                        **networks,
                        **{f"opt_{n}": opt.state_dict() for n, opt in self.optimizers.items()},
                        **{f"scaler_{n}": s.state_dict() for n, s in self.scalers.items()},
                        "augment": self.augmenter.describe(self.state.step),
                        "rng": {
                            "engine": self.generator.get_state(),
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all()
                            if torch.cuda.is_available()
                            else [],
                        },
                    },
                )
                if self.procs.is_main:
                    self.archive.keep()
        barrier(self.procs.world)
        return saved

    # -- one step ----------------------------------------------------------------------

    def _apply_lr(self) -> None:
        """Each group's lr: its own, times the model's schedule, times the NaN-recovery
        scale."""
        factors = self.model.lr_factors(self.state.nimg / 1000)
        for name, opt in self.optimizers.items():
            scale = self.state.lr_scale * factors.get(name, 1.0)
            for group, lr in zip(opt.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = lr * scale

    def _context(self, augment: Callable) -> StepContext:
        set_noise_source(self.model.G, NoiseSource(self.generator, self.part, self.micro_local))
        return StepContext(
            self.generator, self.part, self.micro_local, augment,
            step=self.state.step, kimg=self.state.nimg / 1000,
        )  # fmt: skip

    def _real(self, loaded, ctx: StepContext) -> Batch:
        """The loader's uint8 images (and labels) as a ``Batch`` on the device."""
        images, labels = loaded if isinstance(loaded, list | tuple) else (loaded, None)
        real = images.to(self.device, non_blocking=True).float() / 127.5 - 1
        if self.params.mirror:
            flip = ctx.draw(1, 1, 1).to(self.device) < 0.5
            real = torch.where(flip, real.flip(3), real)
        if self.device.type == "cuda" and self.params.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True).long()
        return Batch(real, labels)

    def _phase_params(self, phase: str) -> list[nn.Parameter]:
        """The parameters the ``phase`` step's optimizers update."""
        return [
            param
            for name in self.phase_optimizers[phase]
            for group in self.optimizers[name].param_groups
            for param in group["params"]
        ]

    def _apply(self, phase: str, losses: list[torch.Tensor], logs: dict | None = None) -> bool:
        """Average gradients, then step the phase's optimizers unless a loss or gradient is
        not finite. ``logs``: add the phase's gradient flow to them (a logging step)."""
        params, scaler = self._phase_params(phase), self.scalers[phase]
        optimizers = [self.optimizers[name] for name in self.phase_optimizers[phase]]
        average_gradients(params, self.procs.world)
        ok = all_true(
            bool(torch.isfinite(torch.stack(losses)).all()), self.procs.world, self.device
        )
        if ok and not scaler.is_enabled():
            grads = [param.grad for param in params if param.grad is not None]
            # one sync for all gradients (a GradScaler checks them itself)
            ok = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if logs is not None:
            logs.update(self.gradient_flow(phase, self.scalers[phase]))
        if ok:
            scale = scaler.get_scale() if scaler.is_enabled() else None
            for opt in optimizers:
                scaler.step(opt)  # with fp16, skips by itself on overflowed gradients
            scaler.update()
            # A GradScaler that skipped lowered its scale: that step did not happen, so it
            # is not counted as good (no EMA update, a bad step towards nan_tolerance).
            ok = scale is None or scaler.get_scale() >= scale
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return ok

    def _logging_step(self) -> bool:
        """Whether the step being taken is one the run logs (``train.log_every``)."""
        step = self.state.step + 1
        return step % self.params.log_every == 0 or step >= self.params.steps

    def _phase(
        self,
        phase: str,
        loss_fn: Callable,
        reals: list[Batch],
        augment,
        logs: dict,
        flow: bool = False,
        batches: Iterator | None = None,
    ) -> bool:
        """One optimizer step of ``phase`` over the accumulated micro-batches (``flow``:
        log its gradient flow). With ``batches`` (the D step, first in a step) each round
        reads its micro-batch into ``reals`` first, for the phases after it to reuse; a
        ``DLoss``'s real logits feed the adaptive augmentation."""
        losses, rounds = [], self.params.accumulate if batches is not None else len(reals)
        for i in range(rounds):
            ctx = self._context(augment)
            if batches is not None:
                reals.append(self._real(next(batches), ctx))
            with self.precision.autocast(self.device):
                outcome = loss_fn(reals[i], ctx)
            loss = outcome.loss if isinstance(outcome, DLoss) else outcome
            self.scalers[phase].scale(loss / rounds).backward()
            losses.append(loss.detach().float())
            logs.update(ctx.logs)
            if isinstance(outcome, DLoss):
                self.augmenter.observe(outcome.real_logits)
        return self._apply(phase, losses, logs if flow else None)

    def train_step(self, batches: Iterator) -> tuple[bool, dict]:
        model, step = self.model, self.state.step
        if type(model).lr_factors is not GANModel.lr_factors:
            self._apply_lr()  # a model with a schedule: its rates at this kimg
        augment = self.augmenter.for_step(step, self.generator, self.part)
        logs: dict[str, float] = {}

        reals: list[Batch] = []
        d_ok = self._phase(
            "D", model.d_loss, reals, augment, logs, self._logging_step(), batches=batches
        )
        if model.d_reg_interval and step % model.d_reg_interval == 0:
            d_ok &= self._phase("D", model.d_reg_loss, reals, augment, logs)

        # D's parameters take no gradient in G's step (frozen ones, freeze_d, stay frozen)
        d_params = self._phase_params("D")
        for param in d_params:
            param.requires_grad_(False)
        g_ok = self._phase("G", model.g_loss, reals, augment, logs, self._logging_step())
        if model.g_reg_interval and step % model.g_reg_interval == 0:
            g_ok &= self._phase("G", model.g_reg_loss, reals, augment, logs)
        for param in d_params:
            param.requires_grad_(True)
        set_noise_source(model.G, None)

        self.state.step += 1
        self.state.nimg += self.params.batch_size
        if g_ok:
            beta = ema_beta(self.params.ema, self.params.batch_size, self.state.nimg)
            modules = model.ema_modules()
            for name, ema in self.ema.items():
                update_ema(ema, modules[name], beta)
        logs.update(self.augmenter.adjust(self.state.step))
        self.state.ada_p = self.augmenter.p
        logs["loss/finite"] = float(d_ok and g_ok)
        return d_ok and g_ok, logs

    # -- the run -----------------------------------------------------------------------

    def _batches(self) -> Iterator:
        balance = {}
        if self.params.balance_classes:
            balance = {"labels": self.dataset.labels.tolist(), "balance": True}
        sampler = StreamSampler(
            len(self.dataset),
            self.micro_global,
            self.params.seed,
            self.procs.rank,
            self.procs.world,
            start=self.state.step * self.params.accumulate,
            **balance,
        )
        return make_loader(self.dataset, sampler, self.params.workers, self.device.type == "cuda")

    def _recover(self) -> None:
        """Too many bad steps in a row: back to the last checkpoint with a lower lr."""
        lr_scale = self.state.lr_scale * self.params.nan_lr_factor
        recoveries = self.state.recoveries + 1
        self._load(load_checkpoint(self.checkpoint_path))
        self.state.lr_scale, self.state.recoveries, self.state.bad_steps = lr_scale, recoveries, 0
        self._apply_lr()

    @property
    def sampler(self) -> GANModel:
        """The model with its averaged networks: what grids and metrics sample from."""
        return with_modules(self.model, self.ema)

    def sample_grid(self):
        """G_ema's images for fixed latents: ``train.grid`` rows × columns, or one row per
        class for a conditional model (the same latents in every row)."""
        rows, cols = self.params.grid
        labels = None
        if self.model.num_classes:
            rows = self.model.num_classes
            labels = torch.arange(rows).repeat_interleave(cols)
        z = fixed_latents(rows * cols, self.model.latent_dim, self.params.seed + GRID_SEED_OFFSET)
        if labels is not None:
            z = z[:cols].repeat(rows, 1)
        images = generate(
            self.G_ema, z, self.params.seed + NOISE_SEED_OFFSET, self.device,
            labels=labels, sample=self.sampler.sample,
        )  # fmt: skip
        return image_grid(images, rows, cols)

    def run(self, stop_at: int | None = None, progress: Callable | None = None) -> dict:
        """Train to ``params.steps`` (or stop after the checkpoint at ``stop_at``, for tests
        of resuming); return the last logged values."""
        params = self.params
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
            while self.state.step < params.steps:
                ok, logs = self.train_step(batches)
                images_since += params.batch_size
                self.state.bad_steps = 0 if ok else self.state.bad_steps + 1
                if self.state.bad_steps >= params.nan_tolerance:
                    self._recover()
                    batches = self._batches()
                    continue
                step, done = self.state.step, self.state.step >= params.steps
                stopping = stop_at is not None and step >= stop_at
                if step % params.log_every == 0 or done or stopping:
                    now = time.perf_counter()
                    logs = all_reduce_mean(as_floats(logs), self.procs.world, self.device)
                    logs.update(self._run_metrics(images_since / max(now - clock, 1e-9)))
                    clock, images_since = now, 0
                    last = logs
                    if logger:
                        logger.log(step, logs)
                if logger and (step % params.sample_every == 0 or done):
                    logger.image(step, self.sample_grid())
                if params.snapshot_every and (step % params.snapshot_every == 0 or done):
                    self.save_snapshot()
                if logger and (fid := self.cheap_fid()):
                    logger.log(step, fid)
                if step % params.checkpoint_every == 0 or done or stopping:
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
        every = round(self.params.eval_every * 1000)
        if not every or self.state.nimg % every >= self.params.batch_size:
            return {}
        from pipeline.metrics.training import TrainingFID  # Inception: only when asked for

        if self._fid is None:
            self._fid = TrainingFID(self.dataset, self.params.eval_images, self.device)
        return self._fid(self.G_ema, self.model.latent_dim, self.params.seed, self.sampler)

    def _run_metrics(self, images_per_s: float) -> dict[str, float]:
        metrics = {
            "kimg": self.state.nimg / 1000,
            **{f"lr/{n}": opt.param_groups[0]["lr"] for n, opt in self.optimizers.items()},
            "augment/prob": self.augmenter.describe(self.state.step)["prob"],
            "speed/images_per_s": images_per_s,  # the global batch: all processes
        }
        if self.device.type == "cuda":
            metrics["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def run_summary(info: dict) -> str:
    """``Trainer.run_info`` as the one line the train stage prints at its start."""
    classes = info["classes"]
    if classes:
        names = ", ".join(classes[:5]) + (
            f" and {len(classes) - 5} more" if len(classes) > 5 else ""
        )
        labels = f"conditional on {len(classes)} classes: {names}"
    else:
        labels = "unconditional"
    where = info["device"] + (f" x{info['processes']}" if info["processes"] > 1 else "")
    where += f" {info['precision']}"
    if info["threads"] is not None:
        where += f", {info['threads']} thread{'s' * (info['threads'] != 1)}"
    where += f", {info['workers']} loader worker{'s' * (info['workers'] != 1)}"
    resumed = info["resumed_at_step"]
    start = "starting at step 0" if resumed is None else f"resuming at step {resumed:,}"
    return (
        f"{info['model']} {info['image_size']} px · G {_millions(info['parameters']['G'])}, "
        f"D {_millions(info['parameters']['D'])} parameters · {info['dataset']['images']:,} "
        f"images, {labels} · {where} · batch {info['batch_size']} · {info['steps']:,} steps, "
        f"{start}"
    )


# A CPU run whose first step says it needs longer than this gets a one-line warning.
SLOW_CPU_RUN_S = 6 * 3600
QUICK_PRESET = "dvc exp run -n quick $(steamgan set-args params.quick.yaml)"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.0f} days"
    return f"{seconds / 3600:,.0f} hours" if seconds >= 7200 else f"{seconds / 60:,.0f} minutes"


def slow_cpu_warning(device: str, steps_left: int, seconds_per_step: float) -> str | None:
    """One line when a CPU run is about to take far longer than anyone waits for on a CPU
    (the shipped params are GPU settings: 150,000 steps at 256 px), naming the preset that
    finishes; None on a GPU or when the run is short enough."""
    eta = steps_left * seconds_per_step
    if device != "cpu" or eta < SLOW_CPU_RUN_S:
        return None
    return (
        f"warning: on the CPU these settings need about {_duration(eta)} "
        f"({steps_left:,} steps at {seconds_per_step:,.1f} s each); for a first run on a CPU "
        f"stop it (Ctrl-C) and use the quick preset: {QUICK_PRESET} (README, Quick start)"
    )


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
