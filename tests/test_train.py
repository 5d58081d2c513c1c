import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.errors import StageError
from pipeline.models.lightweight import LightweightGAN, SkipLayerExcitation
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.ema import ema_beta
from pipeline.training.loop import Trainer, train
from pipeline.training.params import EmaParams, LightweightParams
from pipeline.training.precision import resolve_precision
from tests.train_helpers import flowers, tiny, tiny_progan


@pytest.fixture
def data(tmp_path):
    return flowers(tmp_path / "flowers")


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_lightweight_shapes_at_every_size(size):
    model = LightweightGAN(size, LightweightParams(latent_dim=16, channels=4, attn_res=[32]))
    images = model.G(torch.randn(2, 16))
    assert images.shape == (2, 3, size, size) and images.abs().max() <= 1
    logits, whole, part = model.D(images, part=3)
    assert logits.shape == (2, 25)
    assert whole.shape == part.shape == (2, 3, min(size, 128), min(size, 128))
    excitations = [m for m in model.G.modules() if isinstance(m, SkipLayerExcitation)]
    assert len(excitations) == (1 if size >= 64 else 0) + (1 if size >= 128 else 0)


def test_resume_is_bit_identical(data, tmp_path):
    params = tiny(data, steps=6, workers=2)
    straight = train(params, tmp_path / "a", live_dir=None)
    train(params, tmp_path / "b", live_dir=None, stop_at=3)
    assert load_checkpoint(tmp_path / "b/checkpoints/latest.pt")["state"]["step"] == 3
    resumed = train(params, tmp_path / "b", live_dir=None)
    assert resumed.resumed and resumed.state.step == 6
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.G_ema.state_dict(), resumed.G_ema.state_dict())
    assert states_equal(
        straight.opt_G.state_dict()["state"][0], resumed.opt_G.state_dict()["state"][0]
    )


def test_longer_run_continues_a_finished_one(data, tmp_path):
    train(tiny(data, steps=2, snapshot_every=None), tmp_path, live_dir=None)
    assert list((tmp_path / "snapshots").iterdir()) == []  # the DVC output exists, empty
    more = train(tiny(data, steps=3), tmp_path, live_dir=None)  # steps is not a defining param
    assert more.resumed and more.state.step == 3 and more.state.nimg == 24


def test_checkpoint_of_other_params_is_set_aside_or_used_when_named(data, tmp_path):
    first = train(tiny(data, steps=2, snapshot_every=1), tmp_path, live_dir=None)
    latest = tmp_path / "checkpoints/latest.pt"
    named = tiny(data, steps=1, seed=7, resume_from=str(latest))
    trainer = Trainer(named, tmp_path, live_dir=None)
    assert not trainer.resumed and trainer.state.step == 0  # weights only: a new run
    assert not trainer.notice and latest.exists()

    other = Trainer(tiny(data, steps=1, seed=7), tmp_path, live_dir=None)  # e.g. dvc exp run
    assert not other.resumed and other.state.step == 0
    assert "(changed: seed)" in other.notice
    archive = tmp_path / "superseded" / first.hash
    assert str(archive) in other.notice and not latest.exists()
    kept = load_checkpoint(archive / "latest.pt")  # nothing lost
    assert kept["state"]["step"] == 2 and kept["params_hash"] == first.hash
    assert sorted(p.name for p in (archive / "snapshots").iterdir()) == [
        "step-00000001.pt",
        "step-00000002.pt",
    ]
    assert not (tmp_path / "snapshots").exists()


def test_nan_losses_are_survived(data, tmp_path):
    calls = {"n": 0}

    class Flaky(LightweightGAN):
        def d_loss(self, batch, ctx):
            calls["n"] += 1
            out = super().d_loss(batch, ctx)
            return out._replace(loss=out.loss * float("nan")) if 3 <= calls["n"] <= 5 else out

    params = tiny(data, steps=6, nan_tolerance=2, checkpoint_every=1)
    trainer = train(
        params, tmp_path, live_dir=None, model_factory=lambda p: Flaky(p.image_size, p.lightweight)
    )
    assert trainer.state.step == 6
    assert trainer.state.recoveries >= 1 and trainer.state.lr_scale < 1
    assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(2e-4 * trainer.state.lr_scale)
    checkpoint = load_checkpoint(tmp_path / "checkpoints/latest.pt")
    for name in ("G", "D", "G_ema"):
        assert all(
            torch.isfinite(t).all() for t in checkpoint[name].values() if t.is_floating_point()
        )


def test_nan_weights_are_never_saved(data, tmp_path):
    trainer = Trainer(tiny(data, steps=1), tmp_path, live_dir=None)
    assert trainer.save()
    before = (tmp_path / "checkpoints/latest.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.G.parameters()).fill_(float("nan"))
    assert not trainer.save()
    assert (tmp_path / "checkpoints/latest.pt").read_bytes() == before


def test_dvclive_curves_and_sample_grids(data, tmp_path):
    live = tmp_path / "live"
    train(tiny(data, steps=4, sample_every=2), tmp_path / "out", live_dir=live)
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 4 and "G" in metrics["loss"] and metrics["kimg"] == 0.032
    rows = (live / "plots/metrics/loss/G.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "G"] and len(rows) == 5
    grids = sorted(p.name for p in (live / "plots/images/samples").iterdir())
    assert grids == ["0000002.png", "0000004.png"]


def test_resumed_curves_have_no_duplicate_steps(data, tmp_path):
    live = tmp_path / "live"
    params = tiny(data, steps=4, checkpoint_every=2)
    train(params, tmp_path / "out", live_dir=live, stop_at=3)  # logged 1..3, checkpoint at 3
    # a kill after step 3 was logged but before its checkpoint: pretend the checkpoint is at 2
    train(tiny(data, steps=2, checkpoint_every=2), tmp_path / "out2", live_dir=None)
    train(params, tmp_path / "out", live_dir=live)
    steps = [
        int(r.split("\t")[0])
        for r in (live / "plots/metrics/loss/G.tsv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: [p.unlink() for p in d.glob("*.png")], "no images"),
        (lambda d: [p.write_bytes(b"junk") for p in d.glob("*.png")], "none of its 24 images"),
    ],
)
def test_bad_datasets_give_one_line(data, tmp_path, mutate, message):
    mutate(data)
    with pytest.raises(StageError, match=message) as err:
        Trainer(tiny(data), tmp_path, live_dir=None)
    assert "\n" not in str(err.value)


def test_size_mismatch_names_the_fix(data, tmp_path):
    with pytest.raises(
        StageError, match=r"is 32x32 but train.image_size is 64; set train.image_size=32"
    ):
        Trainer(tiny(data, image_size=64), tmp_path, live_dir=None)


def test_zip_dataset_trains_like_the_folder(data, tmp_path):
    import zipfile

    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(data.iterdir()):
            z.write(path, path.name)
    a = train(tiny(data, steps=2), tmp_path / "a", live_dir=None)
    b = train(tiny(archive, steps=2), tmp_path / "b", live_dir=None)
    assert states_equal(a.model.state_dict(), b.model.state_dict())


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    with pytest.raises(StageError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_bf16_autocast_trains_on_cpu(data, tmp_path):
    trainer = train(tiny(data, steps=2, precision="bf16"), tmp_path, live_dir=None)
    assert trainer.state.step == 2 and trainer.last_logs["loss/finite"] == 1.0


def test_a_step_the_grad_scaler_skips_is_not_counted_as_good(data, tmp_path):
    """fp16's GradScaler skips a step whose scaled gradients overflowed and halves its scale;
    the engine must see that as a step that did not happen (run on the CPU with a real,
    enabled GradScaler: only fp16 autocast itself needs CUDA)."""
    trainer = Trainer(tiny(data, steps=1), tmp_path, live_dir=None)
    G, scaler = trainer.model.G, torch.amp.GradScaler("cpu", init_scale=1024.0)
    zero = [torch.zeros(())]
    scaler.scale(zero[0])  # as a backward pass through the scaler starts it
    for p in G.parameters():
        p.grad = torch.ones_like(p)
    trainer.scalers["G"] = scaler
    assert trainer._apply("G", zero)  # a normal step
    before = [p.detach().clone() for p in G.parameters()]
    for p in G.parameters():
        p.grad = torch.full_like(p, float("inf"))
    assert not trainer._apply("G", zero)
    assert all(torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))
    assert scaler.get_scale() == 1024.0 * scaler.get_backoff_factor()


def test_ema_half_life_and_rampup():
    cfg = EmaParams(half_life_kimg=10, rampup=None)
    assert ema_beta(cfg, 64, 10**6) ** (10_000 / 64) == pytest.approx(0.5)
    ramped = EmaParams(half_life_kimg=10, rampup=0.05)
    assert ema_beta(ramped, 64, 640) < ema_beta(cfg, 64, 640)
    assert ema_beta(EmaParams(decay=0.999, half_life_kimg=None), 64, 0) == 0.999
    with pytest.raises(ValueError, match="exactly one"):
        EmaParams(decay=0.9, half_life_kimg=10)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lightweight", "progan"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(data, tmp_path, monkeypatch, model):
    """``kill -9`` the train stage after a checkpoint; re-running it (as ``dvc repro`` does,
    the checkpoint folder persisting) ends bit-identical to a run never interrupted. The
    progressive DCGAN grows from 16 to 32 px at step 12 and fades in over 4 steps, so the
    kill lands before, in or after the fade."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import REPO

    # One thread: with two, the progressive DCGAN's floats were reduced in an order that
    # depended on the machine's load (2 of 3 runs differed beside two busy processes, 0 of 3
    # with one thread), which is torch's CPU kernels, not resuming.
    run = dict(steps=24, checkpoint_every=4, log_every=4, sample_every=100, threads=1)
    growing = dict(stages=[dict(size=16, kimg=0.096), dict(size=32, kimg=1)], fade_kimg=0.032)
    if model == "lightweight":
        params = tiny(data, **run)
    else:
        params = tiny_progan(data, progan=growing, **run)
    work = tmp_path / "stage"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "stages.train"]
    proc = subprocess.Popen(command, cwd=work, env=env, stderr=subprocess.DEVNULL)
    checkpoint = work / "data/train/checkpoints/latest.pt"
    deadline, step, seen = time.monotonic() + 120, 0, None
    while time.monotonic() < deadline and step < 8:
        time.sleep(0.05)
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp != seen:  # a new checkpoint (loading each poll would slow the run it watches)
            seen, step = stamp, load_checkpoint(checkpoint)["state"]["step"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["state"]["step"]
    assert 8 <= killed_at < 24, "the kill came too late to test resuming"

    plain_lines = {**env, "STEAMGAN_PROGRESS_EVERY": "0"}  # no terminal: a line per step
    rerun = subprocess.run(command, cwd=work, env=plain_lines, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {Path('data/train/checkpoints/latest.pt')} at step" in rerun.stderr
    progress = [line for line in rerun.stderr.splitlines() if line.startswith("train ")]
    assert progress[0].startswith(f"train {model} 32px: {killed_at}/24 "), progress
    assert "kimg" in progress[0] and "img/s" in progress[-1] and "done" in progress[-1]
    resumed = load_checkpoint(checkpoint)
    assert resumed["state"]["step"] == 24
    assert list(checkpoint.parent.iterdir()) == [checkpoint]  # no torn temporary file left

    from pipeline.devices import use_training_threads

    use_training_threads(params.threads)  # as the stage sets them
    straight = train(params, tmp_path / "straight", live_dir=None)
    for name, module in (
        ("G", straight.model.G),
        ("D", straight.model.D),
        ("G_ema", straight.G_ema),
    ):
        assert states_equal(resumed[name], module.state_dict()), name
    # the curves have every step once
    rows = (work / "dvclive/plots/metrics/loss/G.tsv").read_text().splitlines()[1:]
    steps = [int(row.split("\t")[0]) for row in rows]
    assert steps == list(range(4, 25, 4))


def test_gradient_accumulation_and_antialiasing(data, tmp_path):
    light = dict(latent_dim=32, channels=8, attn_res=[16], antialias=True)
    params = tiny(data, steps=2, batch_size=8, accumulate=2, lightweight=light)
    trainer = train(params, tmp_path, live_dir=None)
    assert trainer.state.nimg == 16 and trainer.micro_global == 4
    assert trainer.last_logs["loss/finite"] == 1.0
    assert any(type(m).__name__ == "Blur" for m in trainer.model.G.modules())
    with pytest.raises(ValueError, match="multiple of accumulate"):
        tiny(data, batch_size=8, accumulate=3)


def test_load_generator_rebuilds_g_ema_and_samples_reproducibly(tmp_path):
    from pipeline.training.checkpoint import load_generator
    from pipeline.training.sampling import generate, seeded_latents

    data = flowers(tmp_path / "data", 8, 32)
    trainer = train(tiny(data, steps=2, snapshot_every=1), tmp_path / "run", live_dir=None)
    snapshots = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert [s.name for s in snapshots] == ["step-00000001.pt", "step-00000002.pt"]
    assert load_generator(snapshots[0]).kimg == 0.008
    loaded = load_generator(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert (loaded.model, loaded.image_size, loaded.latent_dim) == ("lightweight", 32, 32)
    assert not loaded.G.training
    last = load_generator(snapshots[1]).G.state_dict()
    for name, value in trainer.G_ema.state_dict().items():
        assert torch.equal(loaded.G.state_dict()[name], value), name
        assert torch.equal(last[name], value), name
    z = seeded_latents([1, 2], loaded.latent_dim)
    assert torch.equal(z[1:], seeded_latents([2], loaded.latent_dim))
    a = generate(loaded.G, z, noise_seed=3, device=torch.device("cpu"))
    b = generate(trainer.G_ema, z, noise_seed=3, device=torch.device("cpu"))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="no mapping network"):
        generate(loaded.G, z, 3, torch.device("cpu"), truncation_psi=0.5)


def test_the_train_stage_says_what_the_run_is_and_writes_run_json(data, tmp_path, monkeypatch):
    """One summary line at the start (model, sizes, data, device, precision, threads,
    batch, steps, where it starts) and the same, resolved, in data/train/run.json."""
    import yaml

    from pipeline import io as pio
    from tests.conftest import run_cli

    monkeypatch.chdir(tmp_path)
    params = tiny(data, steps=2, threads=1)
    Path("params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    result = run_cli("train")
    assert result.exit_code == 0, result.output
    info = pio.read_json("data/train/run.json")
    trainer = Trainer(params, tmp_path / "other", live_dir=None)
    assert info["parameters"] == {
        "G": sum(p.numel() for p in trainer.model.G.parameters()),
        "D": sum(p.numel() for p in trainer.model.D.parameters()),
    }
    assert info["dataset"]["images"] == len(trainer.dataset) and info["classes"] == []
    assert (info["device"], info["precision"], info["threads"]) == ("cpu", "fp32", 1)
    assert (info["batch_size"], info["steps"], info["resumed_at_step"]) == (8, 2, None)
    [line] = [x for x in result.output.splitlines() if x.startswith("train: lightweight 32 px")]
    assert "images, unconditional · cpu fp32, 1 thread, 0 loader workers · batch 8" in line
    assert line.endswith("2 steps, starting at step 0")

    result = run_cli("train", "-S", "train.steps=4")  # more steps: the same run, resumed
    assert result.exit_code == 0, result.output
    assert "4 steps, resuming at step 2" in result.output
    assert pio.read_json("data/train/run.json")["resumed_at_step"] == 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: auto is one thread, no warning")
def test_train_stage_beside_a_busy_job_says_which_thread_count_fits(data, tmp_path):
    """The stage with ``threads: auto`` on a CPU, started while another process spins on a
    core: its threads would fight that job for the core (24x slower on 2 cores, docs/
    quality.md), so it says so in one line naming the count that fits, and trains."""
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import REPO

    params = tiny(data, steps=2, sample_every=100, threads="auto")
    work = tmp_path / "stage"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEAMGAN_PROGRESS_EVERY": "0"}
    env.pop("OMP_NUM_THREADS", None)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # spinning, not starting up
        done = subprocess.run(
            [sys.executable, "-m", "stages.train"], cwd=work, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
    finally:
        spinner.kill()
        spinner.wait()
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "cores busy" in line]
    assert len(warning) == 1 and warning[0].startswith("train: warning: other jobs keep")
    assert "-S train.threads=" in warning[0]
