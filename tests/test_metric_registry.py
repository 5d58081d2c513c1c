"""The metric registry, class labels of datasets and per-class FID: the math on known
features, then the reference and evaluate stages on real labelled flowers with a real
class-conditional StyleGAN2 (random weights) and an unconditional Lightweight GAN."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import StageError
from pipeline.metrics import networks, registry
from pipeline.metrics.fid import frechet_distance, frechet_distance_per_class
from pipeline.metrics.labels import class_counts, generation_labels, read_dataset_labels
from pipeline.metrics.reference import Reference
from pipeline.metrics.registry import (
    MetricContext,
    get_metric,
    list_metrics,
    register_metric,
    run_metric,
)
from pipeline.models import build_model
from pipeline.params import DEFAULT_METRICS, EvaluateParams, validate_params
from pipeline.training.checkpoint import load_generator, save_checkpoint
from pipeline.training.sampling import fixed_latents, generate
from tests.conftest import needs_shared, run_cli, set_args, write_shipped_params
from tests.train_helpers import tiny, tiny_stylegan2

CLASSES = ["daffodil", "snowdrop"]  # Oxford 17 Flowers' classes 1 and 2 (files c1_…, c2_…)


def test_registry_names_every_metric_in_report_order():
    assert list_metrics() == [
        "fid", "kid", "precision_recall", "inception_score", "ppl", "one_face", "fid_per_class",
        "translation",
    ]  # fmt: skip
    assert "fid_per_class" not in DEFAULT_METRICS  # seconds per class: asked for, not default
    assert get_metric("kid").keys == ("kid", "kid_std")
    assert get_metric("fid_per_class").needs == {"inception"}
    with pytest.raises(ValueError, match="unknown metric 'lpips'; use one of fid, kid, "):
        get_metric("lpips")
    with pytest.raises(StageError) as err:  # params.yaml's names are the registry's
        validate_params({"evaluate": {"metrics": ["fid", "fid_per_clas"]}})
    names = [f"'{name}'" for name in list_metrics()]
    assert str(err.value) == (
        "params.yaml: evaluate.metrics: 'fid_per_clas' is not allowed: Input should be "
        f"{', '.join(names[:-1])} or {names[-1]}"
    )
    assert validate_params({"evaluate": {"metrics": ["fid_per_class"]}}).evaluate.metrics == (
        "fid_per_class",
    )


def test_the_registry_refuses_to_load_with_names_params_does_not_know(monkeypatch):
    monkeypatch.setattr(registry, "METRIC_NAMES", (*list_metrics()[:-1], "fid_per_klass"))
    with pytest.raises(ImportError, match=r"registers fid, .*, translation but pipeline\.params"):
        registry._check_names()


def test_a_registered_metric_is_null_with_its_reason_when_it_fails(monkeypatch):
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))  # leave the real one

    @register_metric(keys=("spread", "spread_std"), needs=("inception",))
    def spread(ctx: MetricContext):
        if ctx.generated.inception is None:
            raise ValueError("no generated features")
        values = ctx.generated.inception.std(axis=0)
        return {"spread": float(values.mean()), "spread_std": float(values.std())}

    assert list_metrics()[-1] == "spread"
    ctx = MetricContext(EvaluateParams(), None, torch.device("cpu"), None)
    assert run_metric(get_metric("spread"), ctx) == {"spread": None, "spread_std": None}
    assert ctx.notes == {"spread": "no generated features", "spread_std": "no generated features"}
    ctx.generated.inception = np.array([[0.0, 1.0], [2.0, 5.0]])
    assert run_metric(get_metric("spread"), ctx) == {"spread": 1.5, "spread_std": 0.5}
    with pytest.raises(ValueError, match="registered twice"):
        register_metric()(spread)
    with pytest.raises(ValueError, match="unknown needs"):
        register_metric(needs=("clip",))(lambda ctx: {})


def test_evaluate_loads_the_union_of_the_networks_the_asked_metrics_run():
    union = registry.networks_for
    assert union(["fid", "kid", "fid_per_class"]) == {"inception"}
    assert union(["precision_recall"]) == {"inception", "vgg"}
    assert union(["ppl"]) == {"lpips"}
    assert union(["one_face"]) == {"detector"}
    assert union(["translation", "one_face"]) == {"inception", "lpips", "detector"}
    assert set(registry.metrics_using("inception")) >= {"fid", "translation"}


def test_a_metric_with_its_own_network_is_one_registration(monkeypatch):
    """A new metric declares its own network beside itself; evaluate loads it only when a
    metric asked for runs it, and a network that will not load makes the metric null."""
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))
    monkeypatch.setattr(networks, "_LOADERS", dict(networks._LOADERS))
    loads = []

    def load_brightness(cfg):
        loads.append(cfg.seed)
        if cfg.seed == 1:
            return None, "brightness weights unavailable: put brightness.pt in weights_dir"
        return torch.nn.AvgPool2d(4), None

    networks.register_network("brightness", load_brightness)

    @register_metric(networks=("brightness",))
    def brightness(ctx: MetricContext):
        net = ctx.network("brightness")
        return {"brightness": float(net(torch.ones(1, 3, 4, 4)).mean())}

    assert registry.networks_for(["fid", "brightness"]) == {"inception", "brightness"}
    networks.load_networks(EvaluateParams(), registry.networks_for(["one_face"]))
    assert loads == []  # no metric asked for runs it: never loaded
    loaded = networks.load_networks(EvaluateParams(), registry.networks_for(["brightness"]))
    ctx = MetricContext(EvaluateParams(), None, torch.device("cpu"), None, networks=loaded)
    assert run_metric(get_metric("brightness"), ctx) == {"brightness": 1.0}
    missing = networks.load_networks(EvaluateParams(seed=1), ["brightness"])
    ctx = MetricContext(EvaluateParams(), None, torch.device("cpu"), None, networks=missing)
    assert run_metric(get_metric("brightness"), ctx) == {"brightness": None}
    assert ctx.notes["brightness"].startswith("brightness weights unavailable")
    with pytest.raises(ValueError, match="not registered"):
        register_metric(networks=("clip",))(lambda ctx: {})


def test_fid_per_class_of_known_features():
    """Class 0's fakes are its reals (FID 0); class 1's are its reals shifted by c (same
    covariance: FID = |c|²); class 2 has one generated image (no FID, and why)."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((60, 6))
    real_labels = np.repeat([0, 1, 2], 20)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 0.0])
    fake = np.concatenate([real[:20], real[20:40] + shift, real[40:41]])
    fake_labels = np.repeat([0, 1, 2], [20, 20, 1])
    values, reasons = frechet_distance_per_class(
        real, real_labels, fake, fake_labels, ["a", "b", "c"]
    )
    assert values["a"] == pytest.approx(0, abs=1e-6)
    assert values["b"] == pytest.approx(shift @ shift, rel=1e-6)
    assert values["c"] is None
    assert reasons == {
        "c": "class 'c' has 1 generated and 20 real image(s); FID needs at least 2 of each"
    }
    # the same as FID on each class's rows
    assert values["b"] == frechet_distance(real[20:40], fake[20:40])


def test_generated_classes_follow_the_real_shares_exactly():
    real = np.array([0] * 30 + [1] * 10)  # 3:1
    labels = generation_labels(["a", "b"], ["a", "b"], real, 10, seed=0)
    assert np.bincount(labels).tolist() == [8, 2]  # 7.5 and 2.5: largest remainders, stable
    assert labels.tolist() != sorted(labels.tolist())  # shuffled: every batch has both
    assert np.array_equal(labels, generation_labels(["a", "b"], ["a", "b"], real, 10, seed=0))
    # the model's class order, whatever the reference's
    assert np.bincount(generation_labels(["b", "a"], ["a", "b"], real, 8, 1)).tolist() == [2, 6]
    # other classes, or an unlabelled reference: an equal share each
    assert np.bincount(generation_labels(["x", "y", "z"], ["a", "b"], real, 7, 0)).tolist() == [
        3, 2, 2
    ]  # fmt: skip
    assert np.bincount(generation_labels(["a", "b"], None, None, 6, 0)).tolist() == [3, 3]
    assert generation_labels([], ["a", "b"], real, 6, 0) is None  # unconditional
    assert class_counts([5, 0, 5], 3).tolist() == [2, 0, 1]


def labelled_flowers(folder, per_class: int = 6, size: int = 32, zipped: bool = False):
    """``per_class`` real flowers of each of CLASSES, resized, with their labels in
    dataset.json (NVlabs' layout plus class names), as a folder or a dataset.zip."""
    source = needs_shared("data", "flowers256")
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for index in range(len(CLASSES)):
        for path in sorted(source.glob(f"c{index + 1}_image_*.jpg"))[:per_class]:
            im = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            im.save(folder / f"{path.stem}.png")
            labels.append([f"{path.stem}.png", index])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "classes": CLASSES}))
    if zipped:
        with zipfile.ZipFile(folder / "dataset.zip", "w") as archive:
            for path in sorted(folder.iterdir()):
                if path.name != "dataset.zip":
                    archive.write(path, path.name)
                    path.unlink()
    return folder


def test_dataset_labels_from_a_folder_or_a_zip(tmp_path):
    folder = labelled_flowers(tmp_path / "folder", per_class=2)
    labels = read_dataset_labels(folder)
    assert labels.classes == CLASSES and sorted(labels.by_name.values()) == [0, 0, 1, 1]
    zipped = read_dataset_labels(labelled_flowers(tmp_path / "zip", per_class=2, zipped=True))
    assert zipped == labels and zipped.digest() == labels.digest()
    names = sorted(labels.by_name)
    assert labels.of_images(names, "x").tolist() == [labels.by_name[n] for n in names]
    with pytest.raises(StageError, match=r"x: extra.png has no label in dataset.json; re-run"):
        labels.of_images([*names, "extra.png"], "x")

    data = folder / "dataset.json"
    data.write_text('{"labels": null}')
    assert read_dataset_labels(folder) is None  # unlabelled, as the dataset stage writes it
    data.unlink()
    assert read_dataset_labels(folder) is None  # a bare folder of images
    first, *rest = names
    pairs = [[first, 0], *([name, 2] for name in rest)]
    data.write_text(json.dumps({"labels": pairs}))  # NVlabs': no names
    assert read_dataset_labels(folder).classes == ["0", "1", "2"]
    for meta, message in [
        ("{labels", "dataset.json: unreadable"),
        ({"labels": [[n, [0.5, 1.0]] for n in names]}, "list of \\[file name, class index\\]"),
        ({"labels": [[n, 3] for n in names], "classes": ["x"]}, "has class 3, outside 0..0"),
        ({"labels": [[n, 0] for n in names], "classes": ["x", "x"]}, "distinct names"),
        ({"labels": [[n, 0] for n in names[1:]], "classes": ["x"]}, "1 image.s. have no label"),
    ]:
        data.write_text(meta if isinstance(meta, str) else json.dumps(meta))
        with pytest.raises(StageError, match=message) as err:
            read_dataset_labels(folder)
        assert str(err.value).startswith(str(data)) and "\n" not in str(err.value)


def save_sampling_checkpoint(path, params, classes=()):
    """A checkpoint of freshly initialised networks, as load_generator reads it."""
    torch.manual_seed(0)
    net = build_model(params, for_sampling=True, num_classes=len(classes))
    save_checkpoint(
        path,
        {
            "params": params.model_dump(mode="json"),
            "model": params.model,
            "image_size": params.image_size,
            "latent_dim": net.latent_dim,
            "kimg": 0.0,
            "classes": list(classes),
            "G_ema": net.G.state_dict(),
        },
    )
    return path


def test_evaluate_samples_through_the_model_bit_for_bit(tmp_path):
    """The model's ``sample`` (what evaluate calls) makes the very images G(z) made."""
    data = labelled_flowers(tmp_path / "data", per_class=1)
    path = save_sampling_checkpoint(tmp_path / "sg.pt", tiny_stylegan2(data))
    trained = load_generator(path)
    z = fixed_latents(5, trained.latent_dim, 3)
    for psi in (1.0, 0.7):  # noise inputs seeded per batch, truncation
        plain = generate(trained.G, z, 3, torch.device("cpu"), 2, psi)
        through = generate(trained.G, z, 3, torch.device("cpu"), 2, psi, sample=trained.sample)
        assert torch.equal(plain, through)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A project with 12 labelled flowers (2 classes) and their reference, a conditional
    StyleGAN2 checkpoint of those classes, one of other classes, and an unconditional one."""
    root = tmp_path_factory.mktemp("labelled")
    data = labelled_flowers(root / "data" / "dataset", zipped=True)
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    save_sampling_checkpoint(checkpoints / "conditional.pt", tiny_stylegan2(data), CLASSES)
    save_sampling_checkpoint(checkpoints / "others.pt", tiny_stylegan2(data), ["a", "b", "c"])
    save_sampling_checkpoint(checkpoints / "unconditional.pt", tiny(data))
    (root / "weights").mkdir()
    write_shipped_params(root / "params.yaml")
    return root


def evaluate_args(root, checkpoint, *more):
    return set_args([
        f"evaluate.checkpoint={root / 'checkpoints' / checkpoint}",
        "evaluate.metrics=[fid, fid_per_class]",
        "evaluate.num_images=8",
        "evaluate.batch_size=4",
        "evaluate.device=cpu",
        "evaluate.pr_features=inception",
        "evaluate.download_weights=false",
        f"evaluate.weights_dir={root / 'weights'}",  # empty: no face detector to run
        "reference.workers=0",
        *more,
    ])  # fmt: skip


def read_outputs(root):
    metrics = json.loads((root / "data/evaluate/metrics.json").read_text())
    return metrics, json.loads((root / "data/evaluate/notes.json").read_text())


def test_fid_per_class_of_a_conditional_model_against_a_labelled_reference(labelled, monkeypatch):
    monkeypatch.chdir(labelled)
    result = run_cli("reference", *evaluate_args(labelled, "conditional.pt"))
    assert result.exit_code == 0, result.output
    assert "12 images of data/dataset, 2 classes" in result.output
    details = json.loads((labelled / "data/reference/reference.json").read_text())
    assert details["classes"] == {"daffodil": 6, "snowdrop": 6}
    assert details["key"]["format"] == 3 and len(details["key"]["labels"]) == 16
    with np.load(labelled / "data/reference/reference.npz") as saved:
        assert saved["labels"].tolist() == [0] * 6 + [1] * 6  # c1_… sort before c2_…
        assert json.loads(str(saved["classes"])) == CLASSES

    result = run_cli("evaluate", *evaluate_args(labelled, "conditional.pt"))
    assert result.exit_code == 0, result.output
    metrics, written = read_outputs(labelled)
    per_class = metrics["fid_per_class"]  # nested numbers: DVC shows fid_per_class.daffodil
    assert set(per_class) == set(CLASSES)
    assert all(np.isfinite(v) and v > 0 for v in per_class.values())
    assert metrics["fid_per_class_mean"] == pytest.approx(np.mean(list(per_class.values())))
    assert np.isfinite(metrics["fid"]) and not written["notes"]
    # 4 generated images per class (the reference's 1:1 shares of 8), 6 real
    assert written["warnings"]["fid_per_class"].startswith(
        "4 images per set in its smallest class (daffodil: 4 generated, 6 real), below the 2,049"
    )
    assert f"fid_per_class_mean {metrics['fid_per_class_mean']:.4g}" in result.output

    # a checkpoint of other classes: null, with the reason
    result = run_cli("evaluate", *evaluate_args(labelled, "others.pt"))
    assert result.exit_code == 0, result.output
    metrics, written = read_outputs(labelled)
    assert metrics["fid_per_class"] is None and metrics["fid_per_class_mean"] is None
    assert written["notes"]["fid_per_class"] == (
        "the checkpoint's classes (a, b, c) are not the reference's (daffodil, snowdrop)"
    )
    assert np.isfinite(metrics["fid"])

    # labels changed since the reference: refused before any image is made, in one line
    dataset = labelled / "data/dataset/dataset.zip"
    shutil.copy(dataset, labelled / "dataset.zip.bak")
    with zipfile.ZipFile(dataset) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    relabelled = json.loads(files["dataset.json"])
    relabelled["labels"][0][1] = 1
    files["dataset.json"] = json.dumps(relabelled).encode()
    with zipfile.ZipFile(dataset, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    result = run_cli("evaluate", *evaluate_args(labelled, "conditional.pt"))
    shutil.move(labelled / "dataset.zip.bak", dataset)
    assert result.exit_code == 1
    assert "computed with other settings (" in result.output and "labels '" in result.output
    assert "run dvc repro reference" in result.output


def test_fid_per_class_is_null_with_the_reason_for_an_unconditional_model(labelled, monkeypatch):
    monkeypatch.chdir(labelled)
    if not (labelled / "data/reference/reference.npz").is_file():
        assert run_cli("reference", *evaluate_args(labelled, "conditional.pt")).exit_code == 0
    result = run_cli("evaluate", *evaluate_args(labelled, "unconditional.pt"))
    assert result.exit_code == 0, result.output
    metrics, written = read_outputs(labelled)
    assert np.isfinite(metrics["fid"])
    assert metrics["fid_per_class"] is None and metrics["fid_per_class_mean"] is None
    why = "the lightweight checkpoint is unconditional: per-class FID needs a class-conditional"
    assert written["notes"]["fid_per_class"].startswith(why)
    assert written["notes"]["fid_per_class_mean"] == written["notes"]["fid_per_class"]
    assert "fid_per_class" not in written["warnings"]
    assert "evaluate: fid_per_class is null, fid_per_class_mean is null: the lightweight" in (
        result.output
    )


def test_a_reference_of_an_older_format_is_refused(labelled, tmp_path, monkeypatch):
    """A reference from before classes were kept (format 2) is refused in one line."""
    monkeypatch.chdir(labelled)
    if not (labelled / "data/reference/reference.npz").is_file():
        assert run_cli("reference", *evaluate_args(labelled, "conditional.pt")).exit_code == 0
    path = labelled / "data/reference/reference.npz"
    shutil.copy(path, tmp_path / "current.npz")
    with np.load(path) as saved:
        arrays = dict(saved)
    key = json.loads(str(arrays["key"]))
    key["format"] = 2
    del key["labels"]
    arrays["key"] = np.array(json.dumps(key))
    del arrays["labels"], arrays["classes"]
    with open(path, "wb") as out:
        np.savez(out, **arrays)
    result = run_cli("evaluate", *evaluate_args(labelled, "conditional.pt"))
    shutil.copy(tmp_path / "current.npz", path)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("steamgan evaluate: error: ")
    assert "computed with other settings (format 2 ≠ 3, labels None ≠ '" in result.output
    assert "run dvc repro reference" in result.output


def test_fid_per_class_is_null_against_an_unlabelled_reference(labelled):
    """No Inception pass needed to say why: the metric on a context built by hand."""
    trained = load_generator(labelled / "checkpoints/conditional.pt")
    features = np.zeros((4, 2048), np.float32)
    reference = Reference(features, None, {})
    ctx = MetricContext(EvaluateParams(), trained, torch.device("cpu"), reference)
    ctx.generated.inception, ctx.generated.labels = features, np.array([0, 1, 0, 1])
    assert run_metric(get_metric("fid_per_class"), ctx) == {
        "fid_per_class": None, "fid_per_class_mean": None
    }  # fmt: skip
    assert ctx.notes["fid_per_class"] == (
        "the reference has no class labels (reference.data's dataset.json has none)"
    )
