"""The GPU check's benchmarks, ours and the peers' under the same settings, one per call, each
appending JSON records to ``--results`` (bench/gpu/run.sh calls each in its own process
with a time limit, then bench/gpu/summary.py):

    python bench/gpu/bench.py lightweight     --results DIR [--dry-run]   ours vs lightweight-gan
    python bench/gpu/bench.py stylegan2       --results DIR [--dry-run]   ours vs NVlabs
    python bench/gpu/bench.py stargan2        --results DIR [--dry-run]   256 px, batch 8
    python bench/gpu/bench.py faces           --results DIR [--dry-run]
    python bench/gpu/bench.py inception       --results DIR [--dry-run]
    python bench/gpu/bench.py quality         --results DIR [--dry-run]   FID race, 256 px
    python bench/gpu/bench.py all             --results DIR [--dry-run]   the six in one process

Timing: warm-up steps first (allocations, cuDNN autotuning, kernel builds), then
``repeats`` blocks of ``steps`` steps, each block timed between device syncs; the figure is
the median block. StyleGAN2 blocks are 16 steps, one lazy-R1 cycle, so regularisation is
counted at its share. ``--dry-run`` runs everything on the CPU at 32 px for 1 step (the
first step of each engine runs every phase: both lazy regularisers, NVlabs' four): it
proves the wiring, not the speed.

Data: our trainer reads the flowers through its own loader (worker processes, as in
training); the peers get batches drawn from the same flowers held on the device, which
spares them the loading (their figures are, if anything, flattered).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.faces import load_detector  # noqa: E402
from pipeline.metrics.inception import FeatureSink  # noqa: E402
from pipeline.training.loop import Trainer  # noqa: E402
from pipeline.training.params import TrainParams  # noqa: E402
from tests.cuda_helpers import banners, flowers, inception_for_check  # noqa: E402

NVLABS = REPO / ".peers" / "stylegan2-ada-pytorch"
SHARED = REPO.parent / "shared"


def bench_module(name: str) -> types.ModuleType:
    """One of the CPU benchmarks in bench/ (not a package), for its helpers."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- timing and records ---------------------------------------------------------------------


class Setup:
    """The settings of one run: the issue's on a GPU, a 1-step CPU rehearsal with --dry-run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")
        self.cuda = self.device.type == "cuda"
        self.size = 32 if dry_run else 256
        self.warmup = 0 if dry_run else 5  # the dry run proves the wiring: no warm-up
        self.repeats = 1 if dry_run else 3
        # StyleGAN2 widths for NVlabs' networks (bench/stylegan2_cpu.py); None: the run's
        self.channel_base: int | None = None
        self.dims: int | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def time_blocks(
        self, step: Callable[[], object], steps: int, warmup: int | None = None
    ) -> list[float]:
        """Seconds of each of ``repeats`` blocks of ``steps`` calls, after the warm-up."""
        for _ in range(self.warmup if warmup is None else warmup):
            step()
        self.reset_memory()
        blocks = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            self.sync()
            blocks.append(time.perf_counter() - start)
        return blocks


def device_name(setup: Setup) -> str:
    return torch.cuda.get_device_name() if setup.cuda else "cpu"


def record(results: Path, **fields) -> None:
    """Append one figure (or a skip/failure with its reason) to the results file."""
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "records.jsonl", "a") as out:
        out.write(json.dumps(fields) + "\n")
    shown = {k: v for k, v in fields.items() if k not in ("settings",)}
    print(json.dumps(shown), flush=True)


def training_record(results, setup, bench, impl, blocks, steps, batch, **extra) -> None:
    seconds = statistics.median(blocks)
    images = steps * batch
    record(
        results,
        bench=bench,
        impl=impl,
        status="ok",
        device=device_name(setup),
        images_per_s=images / seconds,
        s_per_kimg=seconds / images * 1000,
        peak_gib=setup.peak_gib(),
        blocks_s=blocks,
        **extra,
    )


def guarded(results: Path, bench: str, impl: str, run: Callable[[], None]) -> None:
    """Run one measurement; a failure becomes a record with its reason, not a lost run."""
    try:
        run()
    except pytest.skip.Exception as exc:  # tests.cuda_helpers: ../shared absent (CI)
        record(results, bench=bench, impl=impl, status="skipped", reason=str(exc))
    except Exception as exc:  # a peer's incompatibility must not hide our figures
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        record(results, bench=bench, impl=impl, status="failed", reason=reason)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def shared_absent(results: Path, bench: str, *parts: str) -> bool:
    """True, with a skip record, when the data the benchmark needs is not in ../shared."""
    path = SHARED.joinpath(*parts)
    if path.exists():
        return False
    record(results, bench=bench, impl="-", status="skipped",
           reason=f"{path} is absent (../shared, or .gpu/shared from prepare.py)")  # fmt: skip
    return True


def device_flowers(setup: Setup, count: int) -> torch.Tensor:
    """Flowers resized to the benchmark size, N×3×S×S in [-1, 1], on the device."""
    images = torch.from_numpy(flowers(count)).permute(0, 3, 1, 2).float()
    images = torch.nn.functional.interpolate(images, size=setup.size, mode="area")
    return (images / 127.5 - 1).to(setup.device)


def random_batches(images: torch.Tensor, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield images[torch.randint(len(images), (batch,), generator=generator)]


# --- ours -----------------------------------------------------------------------------------


def our_trainer(
    setup: Setup, work: Path, model: str, batch: int, domains: int = 0, **settings
) -> Trainer:
    """Our Trainer on flowers at the benchmark size (``domains``: a labelled dataset of that
    many flower classes); ``settings`` are train params (``section.key``: value)."""
    train_bench = bench_module("train")
    count = 32 if setup.dry_run else 128
    data = train_bench.prepare_data(setup.size, work, count, domains)
    params = dict(
        model=model,
        data=str(data),
        image_size=setup.size,
        batch_size=batch,
        steps=10_000_000,  # the most train.steps allows; only a few steps are timed
        device=setup.device.type,
        workers=0 if setup.dry_run else 4,
        checkpoint_every=10**9,
        sample_every=10**9,
        snapshot_every=None,
        log_every=10**9,
    )
    for key, value in settings.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Trainer(TrainParams(**params), work / "out", live_dir=None)


def profile_steps(results: Path, bench: str, step: Callable[[], object], count: int) -> None:
    """Append the operators that took the most device time over ``count`` steps to
    ``profile.txt`` (run.sh returns it): where a step's time goes, read in the same call
    that measured it."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(count):
            step()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)
    with open(results / "profile.txt", "a") as out:
        out.write(f"== {bench}: {count} steps, sorted by {key}\n{table}\n")


def time_ours(
    setup, results, bench, work, model, batch, steps, domains=0, profile=0, **settings
) -> Trainer:
    trainer = our_trainer(setup, work, model, batch, domains, **settings)
    batches = trainer._batches()
    blocks = setup.time_blocks(lambda: trainer.train_step(batches), steps)
    if profile:
        profile_steps(results, f"{bench} (ours)", lambda: trainer.train_step(batches), profile)
    params = sum(p.numel() for m in (trainer.model.G, trainer.model.D) for p in m.parameters())
    training_record(
        results, setup, bench, "ours", blocks, steps, batch,
        precision=trainer.precision.name, parameters=params, settings=settings,
    )  # fmt: skip
    return trainer


# --- Lightweight GAN: ours vs the lightweight-gan package -----------------------------------


# the CPU shim is shared with bench/quality.py
lightweight_gan_on_cpu = bench_module("peers").lightweight_gan_on_cpu


def time_lightweight_gan(
    setup, results, bench, work, batch, steps, attn, amp, latent, fmap_max
) -> None:
    shim = contextlib.nullcontext() if setup.cuda else lightweight_gan_on_cpu()
    with shim:
        from lightweight_gan import Trainer as PeerTrainer

        trainer = PeerTrainer(
            name="bench",
            base_dir=str(work / "lightweight-gan"),
            image_size=setup.size,
            batch_size=batch,
            latent_dim=latent,
            fmap_max=fmap_max,
            attn_res_layers=[attn],
            aug_prob=0.4,  # as our DiffAugment: translation at p 0.4
            aug_types=["translation"],
            amp=amp,
            use_aim=False,
            num_workers=0,
            save_every=10**9,
            evaluate_every=10**9,
        )
        trainer.init_GAN()
        trainer.loader = random_batches(device_flowers(setup, 32 if setup.dry_run else 128), batch)
        # from step 1: its step 0 saves a checkpoint and renders samples, and it renders
        # again at every 100th step, which the timed steps stay below
        trainer.steps = 1
        assert setup.warmup + setup.repeats * steps < 99
        blocks = setup.time_blocks(trainer.train, steps)
        gan = trainer.GAN
        params = sum(p.numel() for m in (gan.G, gan.D) for p in m.parameters())
    training_record(
        results, setup, bench, "lightweight-gan", blocks, steps, batch,
        precision="fp16" if amp else "fp32", parameters=params,
    )  # fmt: skip


def run_lightweight(setup: Setup, results: Path) -> None:
    batch = 4 if setup.dry_run else 64
    steps = 1 if setup.dry_run else 12  # lightweight-gan: gradient penalty every 4th step
    attn = 16 if setup.dry_run else 32
    bench = f"lightweight {setup.size}px batch {batch} attn {attn}"
    if shared_absent(results, bench, "data", "flowers256"):
        return
    amp = setup.cuda  # the package's amp is fp16 autocast + GradScaler, CUDA only
    latent = 32 if setup.dry_run else 256
    # the dry run's networks: narrow, so that a CPU step takes seconds
    small = {"lightweight.channels": 8} if setup.dry_run else {}
    fmap_max = 32 if setup.dry_run else 512
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        for precision in ["fp16", "bf16"] if setup.cuda else ["fp32"]:
            sub = work / precision
            sub.mkdir()
            guarded(results, bench, "ours", lambda sub=sub, precision=precision: time_ours(
                setup, results, bench, sub, "lightweight", batch, steps, precision=precision,
                **{"lightweight.attn_res": [attn], "lightweight.latent_dim": latent}, **small,
            ))  # fmt: skip
        guarded(results, bench, "lightweight-gan", lambda: time_lightweight_gan(
            setup, results, bench, work, batch, steps, attn, amp, latent, fmap_max
        ))  # fmt: skip


# --- StarGAN v2 (no peer: the official code needs its own data layout and a GPU loop) --------


def run_stargan2(setup: Setup, results: Path) -> None:
    """StarGAN v2 at the official setting: 256 px, batch 8, default widths, two flower
    classes as domains, fp32 and bf16 (the seed: batch 3-4 fits an 11 GB GPU at 256 px).
    4 timed steps: two latent-guided and two reference-guided (they alternate)."""
    batch = 2 if setup.dry_run else 8
    steps = 1 if setup.dry_run else 4
    bench = f"stargan2 {setup.size}px batch {batch}"
    if shared_absent(results, bench, "data", "flowers256"):
        return
    small = (
        {"stargan2.channels": 8, "stargan2.max_channels": 32, "stargan2.style_dim": 16,
         "stargan2.mapping_dim": 32}
        if setup.dry_run else {}
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for precision in ["fp32", "bf16"] if setup.cuda else ["fp32"]:
            sub = Path(tmp) / precision
            sub.mkdir()
            guarded(results, bench, "ours", lambda sub=sub, precision=precision: time_ours(
                setup, results, bench, sub, "stargan2", batch, steps, domains=2,
                precision=precision, **small,
            ))  # fmt: skip


# --- StyleGAN2-ADA: ours vs NVlabs stylegan2-ada-pytorch ------------------------------------

# NVlabs train.py's cfg_specs for one GPU at 256 px with the batch forced to 32 (auto would
# pick 16 on one GPU): fmaps → channel_base, map layers, minibatch-std group, lr, R1 gamma
NVLABS_CONFIGS = {
    "auto": dict(channel_base=16384, map=2, mbstd=4, lr=0.0025, gamma=0.0002 * 256**2 / 32),
    "paper256": dict(channel_base=16384, map=8, mbstd=8, lr=0.0025, gamma=1.0),
}
# train.py's augpipe 'bgc'
NVLABS_BGC = dict(
    xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
    brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1,
)  # fmt: skip


def register_loaded_extensions() -> None:
    """NVlabs' ``custom_ops.get_plugin`` builds with ``cpp_extension.load`` and then imports
    the module by name; today's torch returns the loaded module without making it importable
    that way, so a build that succeeded was reported as failed ("No module named
    'upfirdn2d_plugin'", the H200 check on torch 2.11). Patched here at run time: each module
    ``load`` returns is also put on ``sys.modules`` under its name."""
    import torch.utils.cpp_extension as extension

    if getattr(extension.load, "registers_module", False):
        return
    original = extension.load

    def load(name, *args, **kwargs):
        module = original(name, *args, **kwargs)
        sys.modules.setdefault(name, module)
        return module

    load.registers_module = True
    extension.load = load


def twice_differentiable_grid_sample() -> None:
    """NVlabs' ``grid_sample_gradfix`` (the double-differentiable resampling R1 needs through
    the augment pipe) only runs on torch 1.7–1.9; on today's torch it falls back to
    ``F.grid_sample``, whose second derivative CUDA lacks, so their R1 step failed. It is
    replaced at run time by ours (``pipeline.augment.grid_sample``), with their padding and
    corner settings: the same numbers, as their op gave on the torch it was written for."""
    from torch_utils.ops import grid_sample_gradfix

    from pipeline.augment import grid_sample

    def resample(input, grid):
        return grid_sample(input, grid, padding_mode="zeros", align_corners=False)

    grid_sample_gradfix.grid_sample = resample


def nvlabs_ops_build(results: Path, setup: Setup) -> dict:
    """Build NVlabs' custom CUDA ops (bias_act, upfirdn2d) with the machine's nvcc and time
    it; on the CPU they are never used (their reference code runs)."""
    from torch_utils.ops import bias_act, upfirdn2d

    if not setup.cuda:
        return {"built": False, "reason": "CPU: reference implementations"}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # Hopper only: a shorter build
    register_loaded_extensions()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = bias_act._init() and upfirdn2d._init()
    seconds = time.perf_counter() - start
    # the warning's first line says which op, its last the error behind it
    lines = [[line for line in str(w.message).splitlines() if line.strip()] for w in caught]
    reason = "; ".join(f"{ls[0]} ... {ls[-1]}" if len(ls) > 1 else ls[0] for ls in lines if ls)
    reason = reason[:600]
    record(results, bench="stylegan2-ada-pytorch custom ops build", impl="nvlabs",
           status="ok" if ok else "failed", build_s=seconds, reason=reason)  # fmt: skip
    return {"built": bool(ok), "build_s": seconds}


def nvlabs_trainer(setup, config: str, batch: int, reals) -> types.SimpleNamespace:
    """NVlabs' training step as training_loop.py runs it (phases Gmain, Greg every 4, Dmain,
    Dreg every 16, lazy-regularisation lr/betas, nan_to_num, EMA, ADA adjustment every 4),
    with their networks, loss and augment pipe built as train.py builds them; ``reals``
    yields batches in [-1, 1] on the device. Returns the step and the networks."""
    import dnnlib
    from torch_utils import misc, training_stats
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix

    spec = NVLABS_CONFIGS[config]
    device = setup.device
    torch.backends.cudnn.benchmark = True
    conv2d_gradfix.enabled = grid_sample_gradfix.enabled = True
    twice_differentiable_grid_sample()
    small = setup.dry_run  # a network small enough for a CPU step
    base = setup.channel_base or (1024 if small else spec["channel_base"])
    dims = setup.dims or (64 if small else 512)
    # fp16 in the 4 highest resolutions on a GPU, as train.py; fp32 on a CPU (its --fp32),
    # where half precision has no fast kernels (it made their CPU step 24x ours)
    fp16_res = 4 if setup.cuda else 0
    common = dict(c_dim=0, img_resolution=setup.size, img_channels=3)
    G = dnnlib.util.construct_class_by_name(
        class_name="training.networks.Generator", z_dim=dims, w_dim=dims,
        mapping_kwargs=dict(num_layers=spec["map"]),
        synthesis_kwargs=dict(channel_base=base, channel_max=512, num_fp16_res=fp16_res,
                              conv_clamp=256),
        **common,
    ).train().requires_grad_(False).to(device)  # fmt: skip
    D = dnnlib.util.construct_class_by_name(
        class_name="training.networks.Discriminator", channel_base=base, channel_max=512,
        num_fp16_res=fp16_res, conv_clamp=256,
        epilogue_kwargs=dict(mbstd_group_size=spec["mbstd"]), **common,
    ).train().requires_grad_(False).to(device)  # fmt: skip
    G_ema = copy.deepcopy(G).eval()
    augment_pipe = dnnlib.util.construct_class_by_name(
        class_name="training.augment.AugmentPipe", **NVLABS_BGC
    ).train().requires_grad_(False).to(device)  # fmt: skip
    augment_pipe.p.copy_(torch.as_tensor(0.0))
    ada_stats = training_stats.Collector(regex="Loss/signs/real")
    loss = dnnlib.util.construct_class_by_name(
        class_name="training.loss.StyleGAN2Loss", device=device, G_mapping=G.mapping,
        G_synthesis=G.synthesis, D=D, augment_pipe=augment_pipe, r1_gamma=spec["gamma"],
    )  # fmt: skip
    phases = []
    for name, module, interval in (("G", G, 4), ("D", D, 16)):
        ratio = interval / (interval + 1)
        opt = torch.optim.Adam(
            module.parameters(), lr=spec["lr"] * ratio, betas=(0.0, 0.99**ratio), eps=1e-8
        )
        phases += [dict(name=name + "main", module=module, opt=opt, interval=1)]
        phases += [dict(name=name + "reg", module=module, opt=opt, interval=interval)]
    state = dict(batch_idx=0, nimg=0)
    ema_nimg = batch * 10 / 32 * 1000 if config == "auto" else 20 * 1000

    def step() -> None:
        real = next(reals)
        zs = torch.randn([len(phases), batch, G.z_dim], device=device)
        c = torch.zeros([batch, 0], device=device)
        for phase, z in zip(phases, zs, strict=True):
            if state["batch_idx"] % phase["interval"]:
                continue
            phase["opt"].zero_grad(set_to_none=True)
            phase["module"].requires_grad_(True)
            loss.accumulate_gradients(
                phase=phase["name"], real_img=real, real_c=c, gen_z=z, gen_c=c,
                sync=True, gain=phase["interval"],
            )  # fmt: skip
            phase["module"].requires_grad_(False)
            for param in phase["module"].parameters():
                if param.grad is not None:
                    misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            phase["opt"].step()
        beta = 0.5 ** (batch / max(min(ema_nimg, state["nimg"] * 0.05), 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)
        state["nimg"] += batch
        state["batch_idx"] += 1
        if state["batch_idx"] % 4 == 0:
            ada_stats.update()
            adjust = np.sign(ada_stats["Loss/signs/real"] - 0.6) * (batch * 4) / (500 * 1000)
            augment_pipe.p.copy_((augment_pipe.p + adjust).max(misc.constant(0, device=device)))

    return types.SimpleNamespace(
        step=step, G=G, D=D, G_ema=G_ema, state=state, fp16_res=fp16_res, dims=dims, base=base
    )


def time_nvlabs(setup, results, bench, config, batch, steps, ops) -> None:
    """NVlabs' training step (``nvlabs_trainer``) timed beside ours."""
    reals = random_batches(device_flowers(setup, 32 if setup.dry_run else 128), batch)
    nv = nvlabs_trainer(setup, config, batch, reals)
    blocks = setup.time_blocks(nv.step, steps)
    if config == "auto":  # beside ours in profile.txt
        profile_steps(results, f"{bench} (nvlabs)", nv.step, 4)
    params = sum(p.numel() for m in (nv.G, nv.D) for p in m.parameters())
    training_record(
        results, setup, bench, "nvlabs", blocks, steps, batch,
        precision="fp16 top4" if nv.fp16_res else "fp32",
        parameters=params, custom_ops=ops.get("built", False),
        gradfix=conv2d_gradfix_used(setup),
    )  # fmt: skip


def conv2d_gradfix_used(setup) -> bool:
    from torch_utils.ops import conv2d_gradfix

    return conv2d_gradfix._should_use_custom_op(torch.empty(1, device=setup.device))


def run_stylegan2(setup: Setup, results: Path) -> None:
    batch = 4 if setup.dry_run else 32
    steps = 1 if setup.dry_run else 16  # step 0 runs both lazy regularisers
    small = (
        {"stylegan2.channel_base": 1024, "stylegan2.latent_dim": 64, "stylegan2.w_dim": 64}
        if setup.dry_run
        else {}
    )
    if shared_absent(results, f"stylegan2 {setup.size}px", "data", "flowers256"):
        return
    ops: dict = {}
    nvlabs_ok = (NVLABS / "training" / "networks.py").is_file()
    benches = {config: f"stylegan2 {setup.size}px batch {batch} {config} ADA" for config in
               NVLABS_CONFIGS}  # fmt: skip
    if nvlabs_ok:
        sys.path.insert(0, str(NVLABS))
        guarded(results, "stylegan2-ada-pytorch custom ops build", "nvlabs",
                lambda: ops.update(nvlabs_ops_build(results, setup)))  # fmt: skip
    # config by config, ours then NVlabs': a run cut short by its time limit still leaves
    # a pair measured on the same settings (the H200 check of 2026-12-04 timed out after
    # ours alone, at 1.2 s a step)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for config, bench in benches.items():
            work = Path(tmp) / config
            work.mkdir()
            settings = {
                "stylegan2.config": config,
                # NVlabs' auto uses a 2-layer mapping; our map_layers defaults to 8
                "stylegan2.map_layers": None if config == "auto" else 8,
                **small,
            }
            # the auto config's steps also profiled: 4 steps, both lazy regularisers
            guarded(results, bench, "ours", lambda w=work, s=settings, b=bench, c=config: (
                time_ours(setup, results, b, w, "stylegan2", batch, steps,
                          profile=4 if c == "auto" else 0, **s)
            ))  # fmt: skip
            if not nvlabs_ok:
                record(results, bench=bench, impl="nvlabs", status="skipped",
                       reason=f"{NVLABS} is absent (python bench/gpu/prepare.py fills it "
                       "from the fetch tool's mirror; CI has none)")  # fmt: skip
            elif setup.dry_run and config != "auto":  # a CPU step of NVlabs' costs seconds
                record(results, bench=bench, impl="nvlabs", status="skipped",
                       reason="dry run: NVlabs on auto only (this config runs the same code "
                       "with other numbers; ours runs both)")  # fmt: skip
            else:
                guarded(results, bench, "nvlabs", lambda b=bench, c=config: time_nvlabs(
                    setup, results, b, c, batch, steps, ops
                ))  # fmt: skip


# --- faces and Inception --------------------------------------------------------------------


def run_faces(setup: Setup, results: Path) -> None:
    if shared_absent(results, "faces", "weights", "retinaface_mobilenet0.25.pth"):
        return
    faces_bench = bench_module("faces")
    count = 2 if setup.dry_run else 1000
    r50_size = 320 if setup.dry_run else 840  # the dry run: minutes less on a CPU
    images = banners(count)
    weights = SHARED / "weights" / "retinaface_mobilenet0.25.pth"
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        setups = {
            "retinaface mobilenet0.25_1mb @640": lambda: load_detector(
                "retinaface", variant="mobilenet0.25_1mb", weights=weights,
                confidence=0.9, nms=0.4, max_size=640, device=setup.device,
            ),
            f"retinaface resnet50 @{r50_size} (random weights)": lambda: load_detector(
                "retinaface", variant="resnet50_ternaus",
                weights=faces_bench.silent_retinaface(Path(tmp)),
                confidence=0.08, nms=0.01, max_size=r50_size, device=setup.device,
            ),
        }  # fmt: skip
        for label, make in setups.items():
            bench = f"faces {label}, {count} 300×450 banners"
            guarded(results, bench, "ours", lambda make=make, bench=bench: time_faces(
                setup, results, bench, make(), images
            ))  # fmt: skip


def time_faces(setup: Setup, results: Path, bench: str, detector, images) -> None:
    detector.detect(images[:1] if setup.dry_run else images[:32])  # warm-up on a few
    blocks = setup.time_blocks(lambda: detector.detect(images), 1, warmup=0)
    record(results, bench=bench, impl="ours", status="ok", device=device_name(setup),
           batch_size=detector.batch_size, images_per_s=len(images) / statistics.median(blocks),
           blocks_s=blocks)  # fmt: skip


def run_inception(setup: Setup, results: Path) -> None:
    if shared_absent(results, "Inception", "data", "flowers256"):
        return
    batch = 4 if setup.dry_run else 250
    timed = 1 if setup.dry_run else 4
    model = inception_for_check(setup.device)
    note = model.source.name
    images = flowers(batch * timed)
    sink = FeatureSink(model, "clean")

    def rate():
        sink.add(images[:batch])  # warm-up
        every_batch = range(0, len(images), batch)
        blocks = setup.time_blocks(
            lambda: [sink.add(images[i : i + batch]) for i in every_batch], 1, warmup=0
        )
        record(results, bench=f"Inception features batch {batch}", impl="ours", status="ok",
               device=device_name(setup), network=note,
               images_per_s=len(images) / statistics.median(blocks), blocks_s=blocks)  # fmt: skip

    guarded(results, f"Inception features batch {batch}", "ours", rate)
    guarded(results, "evaluate", "ours", lambda: time_evaluate(setup, results, model))


# --- the quality race -----------------------------------------------------------------------

QUALITY_MINUTES = float(os.environ.get("QUALITY_MINUTES", "2"))  # both trainers at once


def run_quality(setup: Setup, results: Path) -> None:
    """bench/quality.py's gpu profile (issue 23): our Lightweight GAN and lightweight-gan on
    the GPU at once for QUALITY_MINUTES at 256 px, batch 64; FID of 2,000 samples at 0 and
    4 evenly spaced wall-clock points against the carried flowers. The dry run: the cpu
    profile on 32 flowers for 3 seconds, one trainer after the other, 16 samples. Its
    folder (fid.csv, samples.jpg, fid.png) is ``results/quality``; run.sh returns those."""
    if shared_absent(results, "quality", "data", "flowers256"):
        return
    out = results / "quality"
    data = flowers = SHARED / "data" / "flowers256"
    if setup.dry_run:
        data = results / "quality-flowers"
        data.mkdir(parents=True, exist_ok=True)
        for path in sorted(flowers.glob("*.jpg"))[:32]:
            (data / path.name).write_bytes(path.read_bytes())
        args = ["--profile", "cpu", "--minutes", "0.05", "--checkpoints", "1", "--samples", "16"]
        args += ["--sequential"]
    else:
        args = ["--profile", "gpu", "--minutes", str(QUALITY_MINUTES), "--checkpoints", "4"]
    command = [sys.executable, str(REPO / "bench" / "quality.py"), *args, "--data", str(data)]
    command += ["--out", str(out), "--cache", str(results / "quality-cache")]
    bench = f"quality {'32' if setup.dry_run else '256'}px lightweight, FID"
    status = subprocess.run(command).returncode
    table = out / "fid.csv"
    if status or not table.is_file():
        record(results, bench=bench, impl="-", status="failed",
               reason=f"bench/quality.py exited with {status} (its output is above)")  # fmt: skip
        return
    with open(table) as rows:
        for row in csv.DictReader(rows):
            if row["trainer"] == "floor":
                record(results, bench=bench, impl="floor", status="ok", fid=float(row["fid"]),
                       note=row["network"])  # fmt: skip
                continue
            record(results, bench=bench, impl=f"{row['trainer']} {row['network']}",
                   status="ok", device=device_name(setup), checkpoint=int(row["checkpoint"]),
                   seconds=float(row["seconds"]), steps=int(row["steps"]),
                   kimg=float(row["kimg"]), fid=float(row["fid"]))  # fmt: skip


def time_evaluate(setup: Setup, results: Path, model) -> None:
    """``evaluate``'s streamed pass (generate → features → FID and KID) over generated images
    of a freshly initialised Lightweight GAN (256 px; 32 in the dry run), against the
    carried flowers."""
    from pipeline.metrics.evaluation import evaluate_generator
    from pipeline.metrics.fid import feature_stats
    from pipeline.metrics.reference import Reference
    from pipeline.params import EvaluateParams

    count = 4 if setup.dry_run else 10_000  # the dry run: Inception's CPU seconds per image
    real_count = 4 if setup.dry_run else 128
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        trainer = our_trainer(setup, Path(tmp), "lightweight", 8)
        trainer.save()
        real_sink = FeatureSink(model, "clean")
        for start in range(0, real_count, 64):
            real_sink.add(flowers(min(64, real_count - start), start))
        real = real_sink.result()[0]
        reference = Reference(real, feature_stats(real), key={})
        cfg = EvaluateParams(
            checkpoint=str(trainer.checkpoint_path), metrics=("fid", "kid"), num_images=count,
            device=setup.device.type, batch_size=4 if setup.dry_run else 250,
            kid_subset_size=min(1000, real_count, count), kid_subsets=10,
        )  # fmt: skip
        setup.sync()
        start = time.perf_counter()
        metrics = evaluate_generator(cfg, reference, model)
        setup.sync()
        seconds = time.perf_counter() - start
    record(results, bench=f"evaluate fid+kid on {count} generated {setup.size}px", impl="ours",
           status="ok", device=device_name(setup), seconds=seconds, network=model.source.name,
           fid=metrics.get("fid"))  # fmt: skip


# --- summary --------------------------------------------------------------------------------


def environment(results: Path, setup: Setup) -> None:
    """What the figures were measured on, and at which commit (the summary reads it)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    prepared = REPO / ".gpu" / "COMMIT"  # the copy on the GPU machine may have no .git
    if not commit and prepared.is_file():
        commit = prepared.read_text().strip() + " (at prepare time)"
    results.mkdir(parents=True, exist_ok=True)
    env = {
        "commit": commit or "unknown",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(setup),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (results / "environment.json").write_text(json.dumps(env) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=["lightweight", "stylegan2", "stargan2", "faces", "inception", "quality", "all"],
    )
    parser.add_argument("--results", type=Path, required=True, help="folder of the records")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 32 px, 1 step")
    args = parser.parse_args()
    setup = Setup(args.dry_run)
    environment(args.results, setup)
    runs = {
        "lightweight": run_lightweight,
        "stylegan2": run_stylegan2,
        "stargan2": run_stargan2,
        "faces": run_faces,
        "inception": run_inception,
        "quality": run_quality,
    }
    for what in runs if args.what == "all" else [args.what]:
        runs[what](setup, args.results)


if __name__ == "__main__":
    main()
