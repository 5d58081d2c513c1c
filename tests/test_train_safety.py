"""Training on what users really have: the shipped zip with loader workers, damaged images
and checkpoints, crafted checkpoints, parameters of other models, and honest exits."""

import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipeline.errors import StageError
from pipeline.training.checkpoint import load_checkpoint, params_hash, save_checkpoint
from pipeline.training.data import ImageDataset, StreamSampler, make_loader
from pipeline.training.loop import DATASET_CHECK_NAME, Trainer, train
from pipeline.training.params import TrainParams
from tests.conftest import run_cli, set_args
from tests.train_helpers import flowers, tiny, tiny_stylegan2


@pytest.fixture
def data(tmp_path):
    return flowers(tmp_path / "flowers")


def zipped(folder: Path, archive: Path) -> Path:
    """The folder's images as a dataset.zip, stored as the dataset stage writes it."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        for path in sorted(folder.iterdir()):
            z.write(path, path.name)
    return archive


def truncate(path: Path) -> None:
    """Cut a PNG in half: its header still opens, its pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:
        assert im.size == (32, 32)  # the header check alone would pass it


# -- issue 11.1: the shipped zip with loader workers -------------------------------------


def test_zip_dataset_with_two_forked_workers_reads_every_image(tmp_path):
    """dataset.format: zip + train.workers: 2 (the shipped defaults): the parent's check
    must not leave a zip handle that forked workers share (BadZipFile: Bad CRC-32)."""
    folder = flowers(tmp_path / "flowers", count=320)
    archive = zipped(folder, tmp_path / "dataset.zip")
    dataset = ImageDataset(archive)
    assert dataset.check(32) == {}
    expected = torch.stack([dataset[i] for i in range(len(dataset))])  # this process's reads
    dataset.close()
    loader = make_loader(dataset, StreamSampler(len(dataset), 32, seed=0), 2, False)
    sampler = StreamSampler(len(dataset), 32, seed=0)
    for number in range(len(dataset) // 32 * 2):  # every image, twice
        assert torch.equal(next(loader), expected[sampler.batch_indices(number)])

    trainer = train(tiny(archive, steps=3, workers=2), tmp_path / "out", live_dir=None)
    assert trainer.state.step == 3 and trainer.last_logs["loss/finite"] == 1.0


# -- issue 11.4: ADA's p moves for every model -------------------------------------------


@pytest.mark.parametrize("model", ["lightweight", "stylegan2"])
def test_ada_p_moves_for_every_model(data, tmp_path, model):
    ada = dict(interval=1, initial_p=0.5, speed_kimg=1)
    make = tiny_stylegan2 if model == "stylegan2" else tiny
    trainer = train(make(data, steps=2, augment="ada", ada=ada), tmp_path, live_dir=None)
    assert trainer.augment_kind == "ada"
    assert "augment/r_t" in trainer.last_logs  # the engine saw D's real logits
    assert trainer.state.ada_p != 0.5
    assert trainer.last_logs["augment/prob"] == trainer.state.ada_p


# -- issue 11.5: only the chosen model's and augmentation's sections shape a run ----------


def test_params_hash_ignores_other_models_and_unused_augmentations(data):
    base = tiny_stylegan2(data)
    digest = params_hash(base, "data", "ada")

    def changed(**section) -> str:
        dump = base.model_dump(mode="json")
        for key, values in section.items():
            dump[key] = {**dump[key], **values}
        return params_hash(TrainParams.model_validate(dump), "data", "ada")

    assert changed(lightweight={"lr": 0.1}) == digest  # another model's section
    assert changed(aug={"prob": 0.9}) == digest  # DiffAugment is not in use
    assert changed(stylegan2={"r1_gamma": 5.0}) != digest
    assert changed(ada={"target": 0.7}) != digest
    assert params_hash(base, "other data", "ada") != digest
    auto = base.model_copy(update={"augment": "auto"})
    assert params_hash(auto, "data", "ada") == digest  # auto resolves to StyleGAN2's ada
    diff = base.model_copy(update={"augment": "diffaugment"})
    assert params_hash(diff, "data", "diffaugment") != digest


def test_keys_added_later_keep_old_runs_hashes_at_their_default(data):
    """A run from before ``balance_classes`` / ``stylegan2.conditional`` existed hashes as
    it did (so upgrading does not set it aside); a changed value makes another run."""
    from pipeline.training.checkpoint import defining_params

    base = tiny_stylegan2(data)
    dump = base.model_dump(mode="json")
    old = {k: v for k, v in dump.items() if k != "balance_classes"}
    old["stylegan2"] = {k: v for k, v in dump["stylegan2"].items() if k != "conditional"}
    assert defining_params(old, "ada") == defining_params(dump, "ada")
    assert "conditional" in dump["stylegan2"]  # the dump itself is left whole
    digest = params_hash(base, "data", "ada")
    balanced = base.model_copy(update={"balance_classes": True})
    assert params_hash(balanced, "data", "ada") != digest
    dump["stylegan2"]["conditional"] = False
    assert params_hash(TrainParams.model_validate(dump), "data", "ada") != digest


def test_a_lightweight_key_does_not_set_a_stylegan2_run_aside(data, tmp_path):
    train(tiny_stylegan2(data, steps=1), tmp_path, live_dir=None)
    other = tiny_stylegan2(data, steps=2, lightweight=dict(lr=0.1, channels=4))
    trainer = Trainer(other, tmp_path, live_dir=None)
    assert trainer.resumed and trainer.state.step == 1 and not trainer.notice
    changed = tiny_stylegan2(data, steps=2, stylegan2=dict(r1_gamma=5.0))
    trainer = Trainer(changed, tmp_path, live_dir=None)
    assert not trainer.resumed and "(changed: stylegan2.r1_gamma)" in trainer.notice


# -- issue 12.1: a checkpoint never chooses where files go -------------------------------


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_crafted_params_hash_moves_nothing_outside_the_run(data, tmp_path, kind):
    out = tmp_path / "project/data/train"
    first = train(tiny(data, steps=1, snapshot_every=1), out, live_dir=None)
    victim = tmp_path / "victim"
    (victim / "snapshots").mkdir(parents=True)
    (victim / "snapshots/precious.txt").write_text("keep me")
    (victim / "latest.pt").write_text("keep me too")
    latest = out / "checkpoints/latest.pt"
    checkpoint = load_checkpoint(latest)
    # a value that, joined to data/train/superseded/, points at the victim folder
    crafted = "../../../../victim" if kind == "relative" else str(victim)
    assert (out / "superseded" / crafted).resolve() == victim.resolve()
    checkpoint["params_hash"] = crafted
    del checkpoint["format"], checkpoint["checksum"]
    save_checkpoint(latest, checkpoint)  # loads safely with weights_only, checksum valid

    trainer = Trainer(tiny(data, steps=1, seed=5), out, live_dir=None)
    assert (victim / "snapshots/precious.txt").read_text() == "keep me"
    assert (victim / "latest.pt").read_text() == "keep me too"
    assert sorted(p.name for p in victim.rglob("*")) == ["latest.pt", "precious.txt", "snapshots"]
    # the crafted file goes to a folder named after its bytes; the original it replaced
    # (still linked in current/) to its own hash's folder
    names = sorted(p.name for p in (out / "superseded").iterdir())
    crafted_into = [name for name in names if name.startswith("file-")]
    assert len(crafted_into) == 1 and sorted([*crafted_into, first.hash]) == names
    archive = out / "superseded" / crafted_into[0]
    assert str(archive) in trainer.notice
    assert load_checkpoint(archive / "latest.pt")["state"]["step"] == 1
    assert [p.name for p in (archive / "snapshots").iterdir()] == ["step-00000001.pt"]
    assert first.hash != trainer.hash


def test_setting_aside_twice_deletes_nothing(data, tmp_path):
    params = tiny(data, steps=1, snapshot_every=1)
    first = train(params, tmp_path, live_dir=None)
    other = train(tiny(data, steps=1, seed=3), tmp_path, live_dir=None)  # sets first aside
    # the first run again (as dvc exp apply would bring it back), then set aside again
    again = train(params, tmp_path, live_dir=None)
    assert not again.resumed and again.hash == first.hash
    train(tiny(data, steps=1, seed=3), tmp_path, live_dir=None)
    superseded = tmp_path / "superseded"
    names = sorted(p.name for p in superseded.iterdir())
    assert names == sorted([first.hash, f"{first.hash}.1", other.hash])
    archives = [superseded / first.hash, superseded / f"{first.hash}.1"]
    for archive in archives:  # both copies of the first run kept whole
        assert load_checkpoint(archive / "latest.pt")["params_hash"] == first.hash
        assert [p.name for p in (archive / "snapshots").iterdir()] == ["step-00000001.pt"]


def test_a_bad_resume_from_sets_nothing_aside(data, tmp_path):
    train(tiny(data, steps=1), tmp_path, live_dir=None)
    latest = tmp_path / "checkpoints/latest.pt"
    before = latest.read_bytes()
    bad = tmp_path / "other.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match=r"other\.pt: not a loadable checkpoint"):
        Trainer(tiny(data, steps=1, seed=2, resume_from=str(bad)), tmp_path, live_dir=None)
    assert latest.read_bytes() == before and not (tmp_path / "superseded").exists()


# -- issue 12.8: honest exits and verified checkpoints -----------------------------------


def test_unwritable_final_checkpoint_exits_non_zero(data, workdir):
    """A resumed run whose weights are not finite ends with one line and exit 1, not with
    exit 0 and latest.pt at the old step."""
    params = tiny(data, steps=1)
    train(params, workdir / "data/train", live_dir=None)
    latest = workdir / "data/train/checkpoints/latest.pt"
    checkpoint = load_checkpoint(latest)
    for tensor in checkpoint["G_ema"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    del checkpoint["format"], checkpoint["checksum"]
    save_checkpoint(latest, checkpoint)  # as a run whose EMA went non-finite would have
    more = params.model_copy(update={"steps": 2})
    (workdir / "params.yaml").write_text(yaml.safe_dump({"train": more.model_dump(mode="json")}))
    result = run_cli("train")
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("steamgan train: error: the weights at step 2 are not finite")
    assert "latest.pt was not written (it holds step 1)" in last
    assert load_checkpoint(latest)["state"]["step"] == 1


def test_a_bit_flip_in_a_checkpoint_is_refused(data, tmp_path):
    trainer = Trainer(tiny(data, steps=1), tmp_path, live_dir=None)
    assert trainer.save()
    latest = tmp_path / "checkpoints/latest.pt"
    assert load_checkpoint(latest)["params_hash"] == trainer.hash  # verified, loads
    weight = next(trainer.model.G.parameters()).detach().contiguous()
    raw = bytearray(latest.read_bytes())
    at = raw.find(weight.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 10] ^= 0x10  # one bit of one weight
    latest.write_bytes(bytes(raw))
    with pytest.raises(StageError, match="damaged checkpoint") as err:
        load_checkpoint(latest)
    assert "\n" not in str(err.value)
    with pytest.raises(StageError, match="damaged checkpoint"):
        Trainer(tiny(data, steps=2), tmp_path, live_dir=None)


def test_a_checkpoint_from_before_checksums_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "state": {"step": 3}, "G_ema": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path)["state"]["step"] == 3
    torch.save({"format": 7}, path)
    with pytest.raises(StageError, match="not a steam-gan checkpoint"):
        load_checkpoint(path)


# -- issue 12.9: an image that does not decode -------------------------------------------


def test_truncated_png_in_a_folder_is_left_out_and_named(data, tmp_path):
    bad = sorted(data.glob("*.png"))[5]
    truncate(bad)
    out = tmp_path / "out"
    trainer = train(tiny(data, steps=4, batch_size=12), out, live_dir=None)  # every image
    assert trainer.state.step == 4 and len(trainer.dataset) == 23
    assert list(trainer.dataset.skipped) == [bad.name]
    line = trainer.dataset_notice
    assert f"left out 1 image(s) that cannot be decoded: {bad.name}" in line
    assert "\n" not in line and str(out / DATASET_CHECK_NAME) in line

    # the check is recorded for this content: trusted while it is unchanged …
    record = out / DATASET_CHECK_NAME
    text = record.read_text()
    good = sorted(data.glob("*.png"))[0].name
    record.write_text(text.replace('"unreadable": {', f'"unreadable": {{"{good}": "x", ', 1))
    assert set(Trainer(tiny(data, steps=4), out, live_dir=None).dataset.skipped) == {
        bad.name,
        good,
    }
    # … and not once an image changes: the dataset stage rewrote it whole
    bad.write_bytes((data / good).read_bytes())
    resumed = Trainer(tiny(data, steps=4), out, live_dir=None)
    assert resumed.dataset.skipped == {} and len(resumed.dataset) == 24


def test_truncated_png_in_a_zip_is_left_out_and_the_stage_says_so(data, workdir):
    bad = sorted(data.glob("*.png"))[3]
    truncate(bad)
    archive = zipped(data, workdir / "dataset.zip")
    params = tiny(archive, steps=3, batch_size=12, workers=2)
    (workdir / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    result = run_cli("train")
    assert result.exit_code == 0, result.output
    assert f"left out 1 image(s) that cannot be decoded: {bad.name}" in result.output
    assert load_checkpoint(workdir / "data/train/checkpoints/latest.pt")["state"]["step"] == 3


def test_zip_entry_with_a_bad_crc_is_left_out(data, tmp_path):
    archive = zipped(data, tmp_path / "dataset.zip")
    name = sorted(p.name for p in data.glob("*.png"))[2]
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        payload = z.read(name)
    with Image.open(io.BytesIO(payload)) as im:
        im.load()
    at = raw.find(payload)
    raw[at + len(payload) // 2] ^= 0xFF  # the PNG's bytes, not the zip's directory
    archive.write_bytes(bytes(raw))
    dataset = ImageDataset(archive)
    skipped = dataset.check(32)
    assert list(skipped) == [name] and name not in dataset.names


# -- issue 18.2: a CLI run, then dvc exp run -------------------------------------------


@pytest.mark.slow
def test_cli_run_then_dvc_exp_run_loses_no_checkpoint(tmp_path, monkeypatch):
    """``steamgan train`` then ``dvc exp run`` with other params: exp run checks outputs out
    by force, deleting those dvc.lock has no hash for ("No file hash info found … It won't
    be created"); the CLI run's checkpoint must end in superseded/, and a later run with
    its params must continue it."""
    import subprocess

    from tests.conftest import REPO
    from tests.e2e_helpers import commit, dvc

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages["stages"] = {"train": stages["stages"]["train"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    flowers(repo / "data/dataset")
    params = tiny(Path("data/dataset"), steps=4, checkpoint_every=2, snapshot_every=2)
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    commit(repo, "pipeline")

    def cli(*overrides: str) -> None:  # in this process: a torch start-up less per run
        monkeypatch.chdir(repo)
        result = run_cli("train", *set_args(list(overrides)))
        assert result.exit_code == 0, result.output

    def run_of(path: Path) -> tuple[int, int]:
        checkpoint = load_checkpoint(path)
        return checkpoint["params"]["seed"], checkpoint["state"]["step"]

    latest = repo / "data/train/checkpoints/latest.pt"
    cli()  # seed 0, 4 steps, never recorded by DVC
    out = dvc("exp", "run", "-S", "train.seed=1", cwd=repo)
    assert "No file hash info found" in out  # DVC deleted the unrecorded outputs …
    assert "moved to data/train/superseded/" in out
    [archive] = (repo / "data/train/superseded").iterdir()
    assert run_of(archive / "latest.pt") == (0, 4)  # … but the CLI run was kept
    assert sorted(p.name for p in (archive / "snapshots").iterdir()) == [
        "step-00000002.pt",
        "step-00000004.pt",
    ]
    assert run_of(latest) == (1, 4)
    commit(repo, "seed 1")  # dvc.lock now records the seed-1 run

    cli("train.seed=2")  # sets the seed-1 run aside, trains seed 2 outside DVC
    # DVC checks the recorded seed-1 run out over it; the seed-2 run is put back, continued
    out = dvc("exp", "run", "-S", "train.seed=2", "-S", "train.steps=6", cwd=repo)
    assert "put back from data/train/current/latest.pt" in out
    assert "resuming data/train/checkpoints/latest.pt at step 4" in out
    assert run_of(latest) == (2, 6)
    kept = sorted(run_of(p) for p in (repo / "data/train/superseded").glob("*/latest.pt"))
    assert kept[0] == (0, 4) and set(kept[1:]) == {(1, 4)}
