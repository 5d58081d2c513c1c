"""steamgan mix: the average of one run's snapshots, a checkpoint that samples like any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.errors import StageError
from pipeline.training.checkpoint import (
    can_continue,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from pipeline.training.mix import SPECTRAL_VECTORS, expand, mix_checkpoints, pick_snapshots
from stages.mix import OFF
from tests.conftest import run_cli, set_args
from tests.train_helpers import flowers, tiny, tiny_stylegan2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 3-step Lightweight GAN on 32×32 flowers, laid out as the pipeline's data/ (a
    snapshot after every step), with the dataset beside it."""
    from pipeline.training.loop import train

    root = tmp_path_factory.mktemp("mix")
    data = flowers(root / "data/dataset", count=8)
    train(tiny(data, steps=3, snapshot_every=1), root / "data/train", live_dir=None)
    return root


def snapshot(run: Path, step: int) -> Path:
    return run / f"data/train/snapshots/step-{step:08d}.pt"


def loaded(*paths: Path) -> list[tuple[str, dict]]:
    return [(str(path), load_checkpoint(path)) for path in paths]


def kinds(state: dict) -> dict[str, list[str]]:
    """A state dict's keys by how a mix treats them."""
    out: dict[str, list[str]] = {"mean": [], "newest": [], "spectral": []}
    for key, value in state.items():
        if SPECTRAL_VECTORS.search(key):
            out["spectral"].append(key)
        elif torch.is_floating_point(value):
            out["mean"].append(key)
        else:
            out["newest"].append(key)
    return out


def test_mix_of_two_snapshots_is_their_mean(run):
    a, b = load_checkpoint(snapshot(run, 1)), load_checkpoint(snapshot(run, 2))
    # given newest first: the mix orders its inputs by step
    mixed, left_out = mix_checkpoints(loaded(snapshot(run, 2), snapshot(run, 1)))
    assert left_out == []
    state, old, new = mixed["G_ema"], a["G_ema"], b["G_ema"]
    assert state.keys() == new.keys()
    by_kind = kinds(new)
    # what the Lightweight G holds: BatchNorm statistics, their step counts, spectral norms
    assert any(k.endswith("running_var") for k in by_kind["mean"])
    assert any(k.endswith("num_batches_tracked") for k in by_kind["newest"])
    assert by_kind["spectral"]
    for key in by_kind["mean"]:  # weights, biases, running means and variances
        assert torch.equal(state[key], (old[key] + new[key]) / 2), key
        assert state[key].dtype == new[key].dtype
    moved = [k for k in by_kind["mean"] if not torch.equal(old[k], new[k])]
    assert len(moved) > len(by_kind["mean"]) // 2  # the two snapshots do differ
    for key in by_kind["newest"] + by_kind["spectral"]:
        assert torch.equal(state[key], new[key]), key
    # the newest input's header, the inputs listed oldest first, no resume state
    assert mixed["state"] == b["state"] and mixed["kimg"] == b["kimg"]
    assert mixed["params_hash"] == b["params_hash"] and mixed["params"] == b["params"]
    assert [(s["path"], s["step"]) for s in mixed["mixed_from"]] == [
        (str(snapshot(run, 1)), 1), (str(snapshot(run, 2)), 2)
    ]  # fmt: skip
    assert [s["checksum"] for s in mixed["mixed_from"]] == [a["checksum"], b["checksum"]]
    assert not {"format", "checksum"} & mixed.keys()


def test_a_checkpoint_and_a_snapshot_share_only_g_ema(run):
    latest = run / "data/train/checkpoints/latest.pt"
    full = load_checkpoint(latest)
    assert {"G", "D", "opt_G", "opt_D", "rng"} <= full.keys()
    mixed, left_out = mix_checkpoints(loaded(latest, snapshot(run, 1)))
    assert left_out == ["D", "G"]
    assert not any(k.startswith(("opt_", "scaler_")) or k in {"G", "D", "rng"} for k in mixed)
    # two full checkpoints: G and D averaged too (a start for train.resume_from)
    twin = {k: v for k, v in full.items() if k != "checksum"}  # its own: computed
    twin["state"] = {**full["state"], "step": 2}
    twin["G"] = {k: v + 1 if v.is_floating_point() else v for k, v in full["G"].items()}
    mixed, left_out = mix_checkpoints([("twin", twin), (str(latest), full)])
    assert left_out == [] and {"G", "D", "G_ema"} <= mixed.keys()
    weight = next(k for k in kinds(full["G"])["mean"] if k.endswith("weight"))
    assert torch.equal(mixed["G"][weight], (full["G"][weight] + 1 + full["G"][weight]) / 2)
    assert "opt_G" not in mixed and "augment" in mixed  # header kept, optimizers dropped


def test_every_averaged_module_of_ema_is_mixed(run):
    """A model that averages more than G (its ``ema`` modules) gets each of them mixed."""
    a, b = load_checkpoint(snapshot(run, 1)), load_checkpoint(snapshot(run, 3))
    a["ema"] = {"F": {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(1)}}
    b["ema"] = {"F": {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(5)}}
    mixed, _ = mix_checkpoints([("a", a), ("b", b)])
    assert torch.equal(mixed["ema"]["F"]["w"], torch.tensor([1.5, 3.0]))
    assert torch.equal(mixed["ema"]["F"]["n"], torch.tensor(5))


def test_the_mix_loads_and_samples(run, tmp_path):
    mixed, _ = mix_checkpoints(loaded(*(snapshot(run, s) for s in (1, 2, 3))))
    save_checkpoint(tmp_path / "mixed.pt", mixed)
    trained = load_generator(tmp_path / "mixed.pt")
    assert (trained.model, trained.image_size, trained.kimg) == ("lightweight", 32, 0.024)
    for key, value in trained.G.state_dict().items():
        assert torch.equal(value, mixed["G_ema"][key]), key
    images = trained.sample(torch.randn(4, trained.latent_dim))
    assert images.shape == (4, 3, 32, 32) and bool(torch.isfinite(images).all())
    newest = load_generator(snapshot(run, 3)).sample(torch.randn(4, trained.latent_dim))
    assert not torch.equal(images, newest)


def test_stylegan2_snapshots_mix(tmp_path):
    from pipeline.training.loop import train

    data = flowers(tmp_path / "data", count=8)
    train(tiny_stylegan2(data, steps=2, snapshot_every=1), tmp_path / "sg", live_dir=None)
    paths = sorted((tmp_path / "sg/snapshots").glob("step-*.pt"))
    (_, a), (_, b) = loaded(*paths)
    mixed, _ = mix_checkpoints(loaded(*paths))
    assert any(k.endswith("w_avg") for k in mixed["G_ema"])
    for key in kinds(b["G_ema"])["mean"]:
        assert torch.equal(mixed["G_ema"][key], (a["G_ema"][key] + b["G_ema"][key]) / 2), key
    save_checkpoint(tmp_path / "mixed.pt", mixed)
    trained = load_generator(tmp_path / "mixed.pt")
    images = trained.sample(torch.randn(2, trained.latent_dim), truncation_psi=0.5)
    assert images.shape == (2, 3, 32, 32) and bool(torch.isfinite(images).all())


def test_mixing_another_run_is_refused(run, tmp_path):
    from pipeline.training.loop import train

    other = tiny(run / "data/dataset", steps=1, snapshot_every=1, seed=7)
    train(other, tmp_path / "other", live_dir=None)
    foreign = tmp_path / "other/snapshots/step-00000001.pt"
    with pytest.raises(StageError) as err:
        mix_checkpoints(loaded(snapshot(run, 2), foreign))
    message = str(err.value)
    assert message.startswith(f"{foreign}: another run than {snapshot(run, 2)} (params_hash ")
    assert "changed: train.seed); mix snapshots of one run" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("shape", "is torch.float32 (3,), in {ref} torch.float32 {shape}: not snapshots of one"),
        ("nan", "has non-finite values (NaN or inf); leave this snapshot out of the mix"),
        ("missing", "is in one of {path}, {ref} only: not snapshots of one model"),
    ],
)
def test_damaged_tensors_are_refused_naming_file_and_key(run, damage, expected):
    (ref, good), (path, bad) = loaded(snapshot(run, 3), snapshot(run, 1))
    key = kinds(bad["G_ema"])["mean"][0]
    shape = tuple(good["G_ema"][key].shape)
    bad["G_ema"] = dict(bad["G_ema"])
    if damage == "shape":
        bad["G_ema"][key] = torch.zeros(3)
    elif damage == "nan":
        bad["G_ema"][key] = bad["G_ema"][key].clone().fill_(float("nan"))
    else:
        del bad["G_ema"][key]
    with pytest.raises(StageError) as err:
        mix_checkpoints([(ref, good), (path, bad)])
    assert str(err.value).startswith(f"{path}: G_ema.{key} ")
    assert expected.format(ref=ref, path=path, shape=shape) in str(err.value)


def test_bad_inputs_are_refused_in_one_line(run, tmp_path):
    with pytest.raises(StageError, match=r"^no snapshots to mix: give their paths"):
        mix_checkpoints([])
    with pytest.raises(StageError, match=r"step-00000002.pt: the same snapshot as .*step-0+2"):
        mix_checkpoints(loaded(snapshot(run, 2), snapshot(run, 2)))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(StageError, match=r"notes.pt: not a loadable checkpoint"):
        pick_snapshots([text], 0)
    header_only = tmp_path / "header.pt"
    save_checkpoint(header_only, {"model": "lightweight", "kimg": 1.0})
    with pytest.raises(StageError, match=r"header.pt: not a snapshot or checkpoint of a training"):
        pick_snapshots([header_only], 0)
    with pytest.raises(StageError, match=r"step-9\*.pt: matches no file; give snapshot"):
        expand([str(run / "data/train/snapshots/step-9*.pt")])


def test_pick_keeps_the_newest_of_the_run(run, tmp_path):
    files = expand([str(run / "data/train/snapshots/step-*.pt")])
    assert [f.name for f in files] == [f"step-0000000{s}.pt" for s in (1, 2, 3)]
    picked = pick_snapshots(list(reversed(files)), 2)
    assert [Path(path).name for path, _ in picked] == ["step-00000002.pt", "step-00000003.pt"]
    assert pick_snapshots(files, 0, run_hash="0" * 16) == []
    # newest first: reading stops once `last` are found (the broken file is never read)
    broken = tmp_path / "step-00000000.pt"
    broken.write_text("not a checkpoint")
    picked = pick_snapshots([files[2], files[1], broken], 2, newest_first=True)
    assert [checkpoint["state"]["step"] for _, checkpoint in picked] == [2, 3]


def test_cli_mixes_the_given_snapshots_into_out(run, workdir, params_file):
    a, b = snapshot(run, 1), snapshot(run, 3)
    result = run_cli("mix", str(a), str(b), "--out", "mixes/ab.pt")
    assert result.exit_code == 0, result.output
    assert "mix: G_ema averaged over 2 snapshot(s) of run " in result.output
    mixed = load_checkpoint(workdir / "mixes/ab.pt")
    assert [s["step"] for s in mixed["mixed_from"]] == [1, 3]
    assert not (workdir / "data/mix").exists()  # --out writes only that file
    assert load_generator(workdir / "mixes/ab.pt").kimg == 0.024
    result = run_cli("mix", str(a), "--out", str(a))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"steamgan mix: error: --out: {a} is one of the inputs; write the mix elsewhere"
    )


def test_the_stage_is_off_by_default_and_writes_the_same_marker(run, workdir, params_file):
    written = []
    for _ in range(2):
        result = run_cli("mix")
        assert result.exit_code == 0, result.output
        written.append((workdir / "data/mix/mix.json").read_bytes())
    assert json.loads(written[0]) == OFF and written[0] == written[1]  # DVC sees no change
    assert sorted(p.name for p in (workdir / "data/mix").iterdir()) == ["mix.json"]
    result = run_cli("render", "-S", "render.mix=true")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "steamgan render: error: render.mix: data/mix/mixed.pt not found; set mix.last "
        "(e.g. -S mix.last=4) or mix.snapshots and run the mix stage (dvc repro mix), or set "
        "render.mix false"
    )


def test_the_stage_mixes_the_runs_last_snapshots_and_render_draws_it(run, monkeypatch):
    monkeypatch.chdir(run)
    (run / "params.yaml").write_text("{}\n")
    result = run_cli("mix", "-S", "mix.last=2")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "data/mix/mix.json").read_text())
    assert summary["mixed"] and summary["networks"] == ["G_ema"]
    assert [s["step"] for s in summary["mixed_from"]] == [2, 3]
    overrides = ["render.mix=true", "render.grid=[1, 2]", "render.seeds=[0, 1]", "render.frames=2"]
    result = run_cli("render", *set_args(overrides))
    assert result.exit_code == 0, result.output
    assert "from data/mix/mixed.pt (0.024 kimg)" in result.output
    rendered = json.loads((run / "data/render/render.json").read_text())
    assert rendered["checkpoint"] == "data/mix/mixed.pt"
    # turned off again: the mix is gone, only the marker is left
    assert run_cli("mix").exit_code == 0
    assert sorted(p.name for p in (run / "data/mix").iterdir()) == ["mix.json"]


def test_out_inside_the_training_run_or_over_a_file_is_refused(run, tmp_path, monkeypatch):
    """``--out data/train/checkpoints/latest.pt`` replaced the run's checkpoint (optimizers
    and RNG gone, exit 0); now anything in data/train/ is refused, --force or not, and an
    existing file is replaced only with --force."""
    root = tmp_path / "run"
    shutil.copytree(run, root)
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text("{}\n")
    latest = root / "data/train/checkpoints/latest.pt"
    before = latest.read_bytes()
    (root / "link.pt").symlink_to(latest)
    inputs = [str(snapshot(root, 2)), str(snapshot(root, 3))]
    for out in ("data/train/checkpoints/latest.pt", "data/train/mixed.pt", "link.pt"):
        result = run_cli("mix", *inputs, "--out", out, "--force")
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"steamgan mix: error: --out: {out} is inside data/train/, the training run's own "
            "folder (its checkpoint and snapshots); write the mix elsewhere (e.g. mixes/mix.pt)"
        )
    assert latest.read_bytes() == before and not (root / "data/train/mixed.pt").exists()
    old = root / "mixes/old.pt"
    old.parent.mkdir()
    old.write_bytes(b"an earlier mix")
    result = run_cli("mix", *inputs, "--out", "mixes/old.pt")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "steamgan mix: error: --out: mixes/old.pt exists; not replacing it (give another "
        "path, or --force)"
    )
    assert old.read_bytes() == b"an earlier mix"
    assert run_cli("mix", *inputs, "--out", "mixes/old.pt", "--force").exit_code == 0
    assert [s["step"] for s in load_checkpoint(old)["mixed_from"]] == [2, 3]


def test_a_mix_over_the_run_s_checkpoint_is_not_taken_for_it(run, tmp_path):
    """A mix written over checkpoints/latest.pt (as ``mix --out`` could) is set aside and
    the run's checkpoint put back from current/, which is never re-linked to the mix;
    without that copy the stage stops naming the real cause, not train.resume_from."""
    from pipeline.training.loop import Trainer, train

    out = tmp_path / "train"
    shutil.copytree(run / "data/train", out)
    latest = out / "checkpoints/latest.pt"
    mixed, _ = mix_checkpoints(loaded(snapshot(run, 2), snapshot(run, 3)))
    save_checkpoint(latest, mixed)
    params = tiny(run / "data/dataset", steps=4, snapshot_every=1)
    trainer = train(params, out, live_dir=None)
    assert trainer.resumed and trainer.state.step == 4
    assert "was a mix of snapshots (steamgan mix), not a training checkpoint" in trainer.notice
    (aside,) = (out / "superseded").glob("file-*/latest.pt")
    assert load_checkpoint(aside)["mixed_from"] == mixed["mixed_from"]  # kept, not lost
    kept = load_checkpoint(out / "current/latest.pt")
    assert can_continue(kept) and kept["state"]["step"] == 4
    assert sorted(p.name for p in (out / "snapshots").iterdir())[-1] == "step-00000004.pt"

    shutil.rmtree(out / "current")
    save_checkpoint(latest, mixed)
    with pytest.raises(StageError) as err:
        Trainer(params, out, live_dir=None)
    assert str(err.value).startswith(
        f"{latest}: a mix of snapshots (steamgan mix), not a training checkpoint: it has no "
        "optimizer or RNG state to continue this run from; move it away"
    )
    assert "train.resume_from:" not in str(err.value).split(";")[0]
