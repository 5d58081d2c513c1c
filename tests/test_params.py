import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import StageError
from pipeline.models.registry import MODELS
from pipeline.params import Params, apply_overrides, load_params, parse_override, validate_params
from pipeline.steam import BannerKind
from tests.conftest import REPO, shipped_params_text

SECTIONS = (
    "appids", "download", "validate", "faces", "resize", "dataset", "train", "mix", "reference",
    "evaluate", "render", "translate", "report",
)  # fmt: skip


def test_repository_params_are_valid_and_have_every_section():
    raw = yaml.safe_load(shipped_params_text())
    assert set(raw) == set(SECTIONS)
    params = validate_params(raw)
    assert params.download.kind is BannerKind.library_600x900
    # params.yaml spells out every key, so it documents the whole configuration
    for name in SECTIONS:
        assert set(raw[name]) == set(type(params.section(name)).model_fields)
    for detector in ("retinaface", "face_alignment", "dlib"):  # nested detector sections
        section = getattr(params.faces, detector)
        assert set(raw["faces"][detector]) == set(type(section).model_fields)
    # the default faces rule is the seeds' Steam-OneFace "small" set
    assert params.faces.detectors == ("face_alignment", "retinaface")
    assert params.faces.combine == "all" and params.faces.resolutions == ("original", 256)
    # thresholds null: the variant's own, for the seeds' resnet50_ternaus the seeds' 0.08/0.01
    retina = params.faces.retinaface
    assert (retina.variant, retina.confidence, retina.nms, retina.max_size) == (
        "resnet50_ternaus", None, None, None
    )  # fmt: skip
    assert params.faces.batch_size == "auto"
    for nested in ("ema", "aug", "ada", *MODELS):  # every model's section, from the table
        section = getattr(params.train, nested)
        assert set(raw["train"][nested]) == set(type(section).model_fields)
    for nested in ("mixing", "directions", "project"):  # nested render sections
        section = getattr(params.render, nested)
        assert set(raw["render"][nested]) == set(type(section).model_fields)
    assert set(raw["evaluate"]["one_face"]) == set(type(params.evaluate.one_face).model_fields)
    # the papers' settings
    evaluate = params.evaluate
    assert (evaluate.num_images, evaluate.kid_subsets, evaluate.kid_subset_size) == (
        50_000,
        100,
        1000,
    )
    assert (evaluate.pr_k, evaluate.is_splits, evaluate.ppl_epsilon) == (3, 10, 1e-4)
    assert evaluate.resize == "clean" and set(evaluate.metrics) == {
        "fid", "kid", "precision_recall", "inception_score", "ppl", "one_face"
    }  # fmt: skip
    # the seed's Lightweight GAN settings
    light = params.train.lightweight
    assert (light.latent_dim, light.lr, light.attn_res) == (256, 2e-4, [32])
    assert (params.train.batch_size, params.train.aug.prob) == (64, 0.4)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lightweight": {"lr": -1}}}, "train.lightweight.lr: -1 is not allowed"),
        ({"train": {"aug": {"types": ["rotate"]}}}, "train.aug.types: 'rotate' is not allowed"),
        ({"train": {"ema": {"decay": 0.9}}}, "train.ema: "),
        ({"train": {"batch_size": 10, "accumulate": 4}}, "train: "),
        ({"train": {"lightweight": {"lrr": 1}}}, "train.lightweight.lrr: unknown key"),
        ({"train": {"dcgan": {"loss": "lsgan"}}}, "train.dcgan.loss: 'lsgan' is not allowed"),
        ({"train": {"progan": {"norm": "group"}}}, "train.progan.norm: 'group' is not allowed"),
        ({"train": {"dcgan": {"g_kernel": 4}}}, "train.dcgan.g_kernel: 4 is not allowed"),
        ({"train": {"dcgan": {"consistency": 2}}}, "train.dcgan: "),
        (
            {"train": {"progan": {"stages": [{"size": 16, "kimg": 1}, {"size": 64, "kimg": 1}]}}},
            "train.progan.stages: each size doubles the one before (16 -> 64)",
        ),
        (
            {
                "train": {
                    "model": "progan",
                    "image_size": 128,
                    "progan": {"stages": [{"size": 32, "kimg": 1}, {"size": 64, "kimg": 1}]},
                }
            },
            "train.progan.stages: the stages end at 64 px but image_size is 128",
        ),
    ],
)
def test_nested_train_keys_are_named(raw, expected):
    with pytest.raises(StageError) as err:
        validate_params(raw)
    assert str(err.value).startswith(f"params.yaml: {expected}"), str(err.value)


def test_unknown_key_names_section_key_and_allowed_keys():
    with pytest.raises(StageError) as err:
        validate_params({"download": {"kindd": "header"}})
    message = str(err.value)
    assert "download.kindd: unknown key" in message
    assert "kind" in message and "\n" not in message


def test_unknown_section_is_refused():
    with pytest.raises(StageError, match=r"downlaod: unknown key \(allowed: appids, download"):
        validate_params({"downlaod": {}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"download": {"kind": "poster"}}, "download.kind: 'poster' is not allowed: Input should"),
        ({"resize": {"size": "big"}}, "resize.size: 'big' is not allowed"),
        ({"validate": {"expected_size": [300]}}, "validate.expected_size: [300] is not allowed"),
        ({"download": {"workers": 0}}, "download.workers: 0 is not allowed"),
        ({"dataset": {"format": "tar"}}, "dataset.format: 'tar' is not allowed"),
        ({"faces": {"combine": "most"}}, "faces.combine: 'most' is not allowed"),
        ({"faces": {"resolutions": ["big"]}}, "faces.resolutions: ['big'] is not allowed"),
        ({"faces": {"detectors": ["mtcnn"]}}, "faces.detectors: 'mtcnn' is not allowed"),
        ({"faces": {"retinaface": {"nms": 2}}}, "faces.retinaface.nms: 2 is not allowed"),
        ({"faces": {"device": "gpu"}}, "faces.device: 'gpu' is not allowed"),
        ({"evaluate": {"resize": "bilinear"}}, "evaluate.resize: 'bilinear' is not allowed"),
        ({"evaluate": {"metrics": ["fid", "fid"]}}, "evaluate.metrics: ['fid', 'fid'] is not"),
        ({"evaluate": {"metrics": ["lpips"]}}, "evaluate.metrics: 'lpips' is not allowed"),
        ({"evaluate": {"device": "gpu"}}, "evaluate.device: 'gpu' is not allowed"),
        ({"evaluate": {"one_face": {"nms": 2}}}, "evaluate.one_face.nms: 2 is not allowed"),
        ({"reference": {"max_images": 0}}, "reference.max_images: 0 is not allowed"),
        (
            {"dataset": {"labels": "genres"}},
            "dataset.labels: 'genres' is not allowed: Input should be 'none', 'tags' or 'folders'",
        ),
        ({"dataset": {"multi_label": "all"}}, "dataset.multi_label: 'all' is not allowed"),
        (
            {"dataset": {"labels": "folders"}},
            "dataset.folders_root: None is not allowed: required with dataset.labels=folders",
        ),
        ({"train": {"balance_classes": "yes please"}}, "train.balance_classes: 'yes please'"),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_rule(raw, expected):
    with pytest.raises(StageError) as err:
        validate_params(raw, "params.yaml")
    assert str(err.value).startswith(f"params.yaml: {expected}")
    assert "\n" not in str(err.value)


def test_empty_sections_take_defaults():
    assert validate_params({"resize": None}).resize.size == 256


def test_nested_faces_keys_override_and_report_their_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("faces:\n  retinaface:\n    confidence: 0.5\n")
    params = load_params(
        path, ["faces.retinaface.variant=mobilenet0.25_1mb", "faces.dlib.upsample=0"]
    )
    assert params.faces.retinaface.confidence == 0.5 and params.faces.dlib.upsample == 0
    assert params.faces.retinaface.variant == "mobilenet0.25_1mb"
    with pytest.raises(
        StageError, match=r"faces\.retinaface\.confidance: unknown key \(allowed: var"
    ):
        load_params(path, ["faces.retinaface.confidance=0.5"])


def test_load_params_applies_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("download:\n  kind: header\n")
    params = load_params(path, ["download.kind=logo", "resize.size=128", "appids.limit=null"])
    assert params.download.kind is BannerKind.logo
    assert params.resize.size == 128 and params.appids.limit is None


def test_missing_params_file_is_one_line(tmp_path):
    with pytest.raises(StageError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("bad", ["download.kind", "=3", "kind=header", "download.=1", "a..b=1"])
def test_malformed_override(bad):
    with pytest.raises(StageError, match=r"expected section\.key=value"):
        parse_override(bad)


def test_override_of_another_file_is_refused():
    with pytest.raises(StageError, match=r"only params\.yaml"):
        parse_override("other.yaml:download.kind=header")
    assert parse_override("params.yaml:download.kind=header") == (["download", "kind"], "header")


keys = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
scalars = st.one_of(
    st.integers(-(10**9), 10**9),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12),
)


@given(path=st.lists(keys, min_size=2, max_size=4), value=scalars)
def test_override_roundtrip_sets_yaml_typed_value(path, value):
    text = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
    result = apply_overrides({}, [".".join(path) + "=" + text])
    node = result
    for part in path[:-1]:
        node = node[part]
    assert node[path[-1]] == value


@given(size=st.integers(8, 4096), kind=st.sampled_from(list(BannerKind)))
def test_valid_values_validate(size, kind):
    params = validate_params({"resize": {"size": size}, "download": {"kind": kind.value}})
    assert params.resize.size == size and params.download.kind is kind


@given(size=st.one_of(st.integers(max_value=7), st.integers(min_value=4097)))
def test_out_of_range_sizes_are_refused(size):
    with pytest.raises(StageError, match=r"resize\.size"):
        validate_params({"resize": {"size": size}})


def test_params_model_is_the_single_source_of_sections():
    assert set(Params.model_fields) == {
        "appids", "download", "validate_", "faces", "resize", "dataset", "train", "mix",
        "reference", "evaluate", "render", "translate", "report",
    }  # fmt: skip
    assert Path(REPO / "pipeline" / "params.py").exists()


def alias_bomb(levels: int = 6, width: int = 9) -> str:
    """A few hundred bytes of YAML that expand to width**levels items."""
    lines = [f"  - &l0 [{', '.join(['1'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"  - &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines)


def test_a_yaml_alias_bomb_gives_a_short_error_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validate:\n  workers:\n" + alias_bomb() + "\n")
    assert path.stat().st_size < 400
    with pytest.raises(StageError) as error:
        load_params(path)
    line = str(error.value)
    assert len(line) <= 450 and "\n" not in line
    assert line.startswith(f"{path}: validate.workers: [[1, 1, 1, 1, ...], [[...], [...]")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("validate.workers=10000", "validate.workers: 10000 is not allowed: at most 4 processes"),
        ("resize.workers=10000", "resize.workers: 10000 is not allowed: at most 4 processes"),
        ("reference.workers=999", "reference.workers: 999 is not allowed: at most 4 processes"),
        ("train.workers=999", "train.workers: 999 is not allowed: at most 4 processes"),
        ("train.steps=1000000000000", "train.steps: 1000000000000 is not allowed"),
        ("train.batch_size=1000000000000", "train.batch_size: 1000000000000 is not allowed"),
        ("evaluate.num_images=1000000000000", "evaluate.num_images: 1000000000000 is not"),
        ("evaluate.batch_size=100000", "evaluate.batch_size: 100000 is not allowed"),
        ("render.batch_size=100000", "render.batch_size: 100000 is not allowed"),
        ("render.project.steps=1000000000", "render.project.steps: 1000000000 is not allowed"),
        ("download.timeout_s=.inf", "download.timeout_s: inf is not allowed"),
        ("download.rate_per_s=0.000001", "download.rate_per_s: 1e-06 is not allowed"),
        ("download.max_bytes=10000000000", "download.max_bytes: 10000000000 is not allowed"),
    ],
)
def test_work_counts_are_bounded(override, expected, shipped_params):
    with pytest.raises(StageError, match=re.escape(f"-S {override}: {expected}")):
        load_params(shipped_params, [override])


def test_workers_bound_follows_the_cores(shipped_params):
    from pipeline.parallel import available_cores

    limit = 4 * available_cores()
    assert load_params(shipped_params, [f"validate.workers={limit}"]).validate_.workers
    with pytest.raises(StageError, match=f"{limit} on this machine's {available_cores()} cores"):
        load_params(shipped_params, [f"validate.workers={limit + 1}"])


def test_a_bad_key_or_value_from_s_is_blamed_on_the_s_option(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("resize:\n  size: 64\n")
    with pytest.raises(StageError) as err:
        load_params(path, ["resize.mode=crop", "resize.sise=32"])
    assert str(err.value).startswith("-S resize.sise=32: resize.sise: unknown key (allowed: size")
    with pytest.raises(StageError) as err:
        load_params(path, ["faces.retinaface={nms: 2}"])  # a section set whole
    assert str(err.value).startswith("-S faces.retinaface={nms: 2}: faces.retinaface.nms: 2 is")
    path.write_text("resize:\n  sise: 64\n")  # the file's own mistake stays the file's
    with pytest.raises(StageError) as err:
        load_params(path, ["resize.mode=crop"])
    assert str(err.value).startswith(f"{path}: resize.sise: unknown key")


def test_offline_overlay_switches_every_network_source_to_a_local_one(shipped_params):
    """params.offline.yaml as `steamgan set-args` prints it, applied over params.yaml."""
    from pipeline.params import overlay_overrides
    from tests.conftest import REPO, needs_shared, run_cli

    overrides = overlay_overrides(REPO / "params.offline.yaml")
    printed = run_cli("set-args", str(REPO / "params.offline.yaml"))
    assert printed.exit_code == 0
    assert printed.stdout.split() == [word for o in overrides for word in ("-S", o)]
    p = load_params(shipped_params, overrides)
    # Steam's app list and CDN from `steamgan mirror` on 127.0.0.1, pictures of any size
    assert p.appids.source == "steam" and p.appids.steam_api_url.startswith("http://127.0.0.1:")
    assert p.download.cdn_url.startswith("http://127.0.0.1:") and p.validate_.expected_size is None
    flags = [p.faces.download_weights, p.evaluate.download_weights,
             p.train.lightweight.download_weights, p.render.project.download_weights]  # fmt: skip
    assert not any(flags)
    assert p.faces.detectors == ("retinaface",)
    shared = needs_shared("weights", "retinaface_mobilenet0.25.pth")
    for path in (p.faces.retinaface.weights, p.evaluate.one_face.weights):
        assert (REPO / path).resolve().exists(), path  # ../shared beside the repository
    assert (REPO / p.evaluate.one_face.weights).resolve() == shared.resolve()


def test_overlay_with_a_typo_names_the_overlay_file(tmp_path):
    from pipeline.params import overlay_overrides

    path = tmp_path / "params.offline.yaml"
    path.write_text("faces:\n  retinaface:\n    wieghts: x.pth\n")
    with pytest.raises(StageError, match=r"params.offline.yaml: faces.retinaface.wieghts: unknown"):
        overlay_overrides(path)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [
                "train.model=progan",
                "train.progan.stages=[{size: 32, kimg: 1}, {size: 64, kimg: 1}]",
            ],
            "train.progan.stages: the stages end at 64 px but image_size is 256 (leave stages "
            "null to grow to image_size, or end them at 256)",
        ),
        (["train.batch_size=7", "train.accumulate=2"], "train: batch_size 7 must be a multiple"),
        (["train.dcgan.consistency=1"], "train.dcgan: consistency (CT-GAN) needs loss: wgan_gp"),
        (
            ["train.progan.stages=[{size: 16, kimg: 1}, {size: 64, kimg: 1}]"],
            "train.progan.stages: each size doubles the one before (16 -> 64)",
        ),
    ],
)
def test_a_check_across_a_section_names_keys_not_the_section_dict(
    overrides, expected, shipped_params
):
    """A model validator's error used to print the whole section's dict before its reason."""
    with pytest.raises(StageError) as err:
        load_params(shipped_params, overrides)
    line = str(err.value)
    assert expected in line, line
    assert "{" not in line.replace(overrides[-1], "") and "[" not in line.replace(overrides[-1], "")
    assert len(line.splitlines()) == 1


def test_every_problem_is_named(shipped_params):
    with pytest.raises(StageError) as err:
        load_params(shipped_params, ["resize.sise=32", "resize.size=-1", "dataset.mirorr=1"])
    line = str(err.value)
    assert line.endswith("(and 2 more: dataset.mirorr, resize.sise)"), line
