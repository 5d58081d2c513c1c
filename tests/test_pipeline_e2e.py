"""``dvc repro`` of the whole curation pipeline in a scratch copy of the repository, then
experiments on copies of that run (other models: tests/test_models_e2e.py)."""

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import needs_shared
from tests.e2e_helpers import (
    commit,
    dvc,
    pipeline_overrides,
    scratch_repo,
)
from tests.fake_steam import FakeSteam

pytestmark = pytest.mark.slow


def stylegan2_overrides() -> list[str]:
    """A tiny StyleGAN2-ADA on the same 32×32 data, both regularisers every other step."""
    values = {
        "model": "stylegan2",
        "stylegan2.latent_dim": 32,
        "stylegan2.w_dim": 32,
        "stylegan2.map_layers": 2,
        "stylegan2.channel_base": 512,
        "stylegan2.channel_max": 64,
        "stylegan2.r1_interval": 2,
        "stylegan2.pl_interval": 2,
        "ada.interval": 1,
    }
    return [arg for key, value in values.items() for arg in ("-S", f"train.{key}={value}")]


STAGES = ("appids", "download", "validate", "faces", "resize", "dataset", "train", "mix",
          "reference", "evaluate", "render", "report")  # fmt: skip


@dataclass
class PipelineRun:
    repo: Path  # the scratch repository after its first `dvc repro`
    steam: FakeSteam  # the server its params point at, alive for the whole module
    output: str  # what that `dvc repro` printed


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Iterator[PipelineRun]:
    """One `dvc repro` of the whole pipeline, shared by this module's tests (each full run
    costs a minute or more of stage start-ups). Tests only read it: one that runs more
    stages or experiments works on its own copy (``copy_repo``)."""
    needs_shared("data", "steam_capsules")
    tmp_path = tmp_path_factory.mktemp("pipeline")
    with FakeSteam() as steam:
        overrides = pipeline_overrides(steam, tmp_path)
        repo = scratch_repo(tmp_path, overrides)
        yield PipelineRun(repo, steam, dvc("repro", cwd=repo))


def copy_repo(run: PipelineRun, tmp_path: Path) -> Path:
    """A copy of the shared run's repository (git, DVC cache, outputs) for a test to change."""
    repo = tmp_path / "repo"
    shutil.copytree(run.repo, repo, symlinks=True)
    return repo


def test_dvc_repro_curates_then_does_nothing(pipeline_run):
    repo, steam, first = pipeline_run.repo, pipeline_run.steam, pipeline_run.output
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first

    appids = pd.read_parquet(repo / "data/appids/appids.parquet")
    assert appids["appid"].tolist() == steam.app_ids()
    manifest = pd.read_parquet(repo / "data/download/manifest.parquet").set_index("appid")
    assert manifest.loc[9_000_001, "status"] == "missing"
    assert manifest.loc[9_000_004, "status"] == "invalid"
    assert manifest.loc[9_000_011, "status"] == "error"
    rejected = pd.read_parquet(repo / "data/validate/rejected.parquet").set_index("appid")
    expected = {
        9_000_005: "truncated",
        9_000_008: "blank",
        9_000_009: "vignette",
        9_000_010: "near_duplicate",
    }
    assert {a: rejected.loc[a, "reason"] for a in expected} == expected
    accepted = pd.read_parquet(repo / "data/validate/accepted.parquet")
    assert {9_000_002, 9_000_003} <= set(accepted["appid"])  # retried, then fine
    converted = accepted.set_index("appid").loc[[9_000_006, 9_000_007]]  # RGBA, greyscale
    assert converted["converted"].all() and converted["path"].str.startswith("data/validate/").all()
    assert set(accepted["appid"]).isdisjoint(expected)
    assert len(accepted) + len(rejected) == (manifest["status"] == "ok").sum()
    # real oddities among the shared capsules: eight are 183 px wide, one is 184×67 CMYK;
    # all within validate.size_tolerance (2 px), and the CMYK one converted
    assert (rejected["reason"] == "wrong_size").sum() == 0

    # faces: every validated banner is judged once; those with a face are set aside
    no_face = pd.read_parquet(repo / "data/faces/accepted.parquet")
    with_faces = pd.read_parquet(repo / "data/faces/rejected.parquet")
    assert sorted([*no_face["appid"], *with_faces["appid"]]) == sorted(accepted["appid"])
    assert set(with_faces["reason"]) <= {"face_count"}
    assert len(no_face) >= 0.8 * len(accepted)  # capsules are mostly logos and screenshots
    detections = pd.read_parquet(repo / "data/faces/detections.parquet")
    assert len(detections) == len(accepted) and (detections["n_faces"] > 0).sum() == len(with_faces)
    summary = json.loads((repo / "data/faces/summary.json").read_text())
    assert summary["accepted"] == len(no_face) and summary["input"] == len(accepted)
    assert (repo / "data/faces/cache/results.sqlite").exists()

    resized = pd.read_parquet(repo / "data/resize/accepted.parquet")
    assert resized["appid"].tolist() == no_face["appid"].tolist()
    with zipfile.ZipFile(repo / "data/dataset/dataset.zip") as archive:
        names = set(archive.namelist())
    assert names == {f"{a}.png" for a in no_face["appid"]} | {"dataset.json"}
    stats = json.loads((repo / "data/dataset/stats.json").read_text())
    assert stats["count"] == len(no_face)
    metrics = dvc("metrics", "show", cwd=repo)
    assert "data/dataset/stats.json" in metrics and "data/faces/summary.json" in metrics

    # train: a checkpoint, DVCLive curves and sample grids, shown by dvc
    from pipeline.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(repo / "data/train/checkpoints/latest.pt")
    assert checkpoint["state"]["step"] == 4 and checkpoint["image_size"] == 32
    snapshots = [p.name for p in (repo / "data/train/snapshots").iterdir()]
    assert snapshots == ["step-00000004.pt"]  # snapshot_every 10k: only the last step
    live = json.loads((repo / "dvclive/metrics.json").read_text())
    assert live["step"] == 4 and "G" in live["loss"]
    grids = sorted(p.name for p in (repo / "dvclive/plots/images/samples").iterdir())
    assert grids == ["0000002.png", "0000004.png"]
    assert "dvclive/metrics.json" in dvc("metrics", "show", cwd=repo)
    shown = dvc("plots", "show", "--json", cwd=repo)
    plots = json.loads(shown[shown.index("{") :])["data"]
    assert "dvclive/plots/metrics/loss/G.tsv" in plots
    assert any(key.endswith("samples/0000004.png") for key in plots)

    # reference + evaluate: the metrics of the 4-step checkpoint, shown by dvc
    reference = json.loads((repo / "data/reference/summary.json").read_text())
    assert reference["num_images"] == 8 and reference["dataset_images"] == len(no_face)
    evaluated = json.loads((repo / "data/evaluate/metrics.json").read_text())
    assert evaluated["fid"] > 0 and 0 <= evaluated["precision"] <= 1
    assert evaluated["one_face_rate_real"] == reference["one_face_rate"]
    notes = json.loads((repo / "data/evaluate/notes.json").read_text())["notes"]
    assert evaluated["ppl_z"] is None and "vgg16" in notes["ppl_z"]
    shown = dvc("metrics", "show", "--json", cwd=repo)
    shown, _ = json.JSONDecoder().raw_decode(shown[shown.index("{") :])
    workspace = next(iter(shown.values()))["data"]
    assert workspace["data/evaluate/metrics.json"]["data"]["fid"] == evaluated["fid"]
    assert "data/reference/summary.json" in workspace
    # render: a Lightweight GAN gets the grids and the Z video; dvc shows the pictures
    render = repo / "data/render"
    assert Image.open(render / "images/fakes.png").size == (3 * 32, 2 * 32)
    assert Image.open(render / "images/progress.png").size == (32, 2 * 32)  # one snapshot
    with Image.open(render / "images/interpolation-z.gif") as gif:
        assert gif.n_frames == 2 * 4
    assert (render / "videos/interpolation-z.mp4").stat().st_size > 0
    summary = json.loads((render / "render.json").read_text())
    assert "projection" in summary["unsupported"] and summary["model"] == "lightweight"
    for name in ("fakes.png", "reals.png", "progress.png", "interpolation-z.gif"):
        assert plots[f"data/render/images/{name}"][0]["type"] == "image"
    # report: the page, with the dataset's count; its funnel chart among dvc's plots
    page = (repo / "data/report/index.html").read_text()
    assert f'data-stage="dataset" data-count="{len(no_face)}"' in page
    assert "The train stage has not run" not in page and (repo / "data/report/trace.csv").exists()
    assert plots["data/report/funnel.svg"][0]["type"] == "image"

    second = dvc("repro", cwd=repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second


def test_dvc_exp_run_set_param_reruns_only_downstream(pipeline_run, tmp_path):
    repo = copy_repo(pipeline_run, tmp_path)
    commit(repo, "base")
    before = json.loads((repo / "data/dataset/stats.json").read_text())
    # up to the dataset only
    out = dvc("exp", "run", "-S", "dataset.mirror=true", "dataset", cwd=repo)
    assert "Running stage 'dataset'" in out
    for stage in ("appids", "download", "validate", "faces", "resize"):
        assert f"Running stage '{stage}'" not in out
    after = json.loads((repo / "data/dataset/stats.json").read_text())
    assert after["count"] == 2 * before["count"]
    assert after["mean"] == before["mean"]

    # StyleGAN2-ADA on the new dataset as an experiment: only train runs, the Lightweight
    # checkpoint DVC checked out is set aside (not lost), and the curves carry ADA's p and
    # the regularisers
    out = dvc("exp", "run", *stylegan2_overrides(), cwd=repo)
    assert "Running stage 'train'" in out and "Running stage 'dataset'" not in out
    assert "moved to data/train/superseded/" in out
    superseded = list((repo / "data/train/superseded").glob("*/latest.pt"))
    assert len(superseded) == 1
    from pipeline.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(repo / "data/train/checkpoints/latest.pt")
    assert checkpoint["model"] == "stylegan2" and checkpoint["augment"]["kind"] == "ada"
    assert checkpoint["state"]["step"] == 4
    live = json.loads((repo / "dvclive/metrics.json").read_text())
    assert live["augment"]["prob"] == checkpoint["state"]["ada_p"]
    assert (repo / "dvclive/plots/metrics/loss/pl_penalty.tsv").exists()
    assert (repo / "dvclive/plots/metrics/loss/r1_penalty.tsv").exists()
    assert (repo / "dvclive/plots/images/samples/0000004.png").exists()
    # render follows train: StyleGAN2 gets every render, the projection's loss is a metric
    assert "Running stage 'render'" in out
    summary = json.loads((repo / "data/render/render.json").read_text())
    assert summary["model"] == "stylegan2" and summary["unsupported"] == {}
    assert (repo / "data/render/images/mixing.png").exists()
    assert (repo / "data/render/videos/projection.mp4").exists()
    assert "projection.final_loss" in dvc("metrics", "show", cwd=repo).replace("\n", " ")


# docs/experiments.md: the columns that make `dvc exp show` readable (deps' hashes, rejection
# reasons, losses and settings dropped). DVC matches each pattern at the start of a name.
DOCS_DROP = (
    "Created|(data|pipeline|stages|dvclive)/[^:]*$|reasons\\.|bytes|.*_std|loss\\.|lr\\.|speed\\."
)


def exp_records(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` flattened: experiment name → its metrics by file."""
    records = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                metrics = node["data"].get("metrics") or {}
                records[node["name"]] = {path: m.get("data", {}) for path, m in metrics.items()}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return records


def json_out(text: str):
    start = min(i for i in (text.find("{"), text.find("[")) if i >= 0)
    return json.JSONDecoder().raw_decode(text[start:])[0]


def test_dvc_exp_show_compares_the_metrics_of_two_experiments(pipeline_run, tmp_path):
    """Two experiments on different data: `dvc exp show` reads every metric of each from its
    commit (DVC's cache), not only the workspace's, and `dvc plots diff` compares curves.
    "large" is the shared run (every app) kept as an experiment, "small" a run on 24 apps
    (allow_shrink: download otherwise refuses an app list cut by half, as it tells users)."""
    repo = copy_repo(pipeline_run, tmp_path)
    dvc("exp", "run", "-n", "large", "evaluate", cwd=repo)
    fewer_apps = ["-S", "appids.limit=24", "-S", "download.allow_shrink=true"]
    dvc("exp", "run", "-n", "small", *fewer_apps, "evaluate", cwd=repo)

    records = exp_records(json_out(dvc("exp", "show", "--json", cwd=repo)))
    small, large = records["small"], records["large"]
    for path, key in (
        ("data/evaluate/metrics.json", "fid"),
        ("data/download/summary.json", "ok"),
        ("data/validate/summary.json", "accepted"),
        ("data/faces/summary.json", "accepted"),
        ("data/faces/summary.json", "input"),
        ("data/dataset/stats.json", "count"),
        ("data/reference/summary.json", "dataset_images"),
    ):
        a, b = small[path][key], large[path][key]
        assert isinstance(a, int | float) and isinstance(b, int | float) and a != b, (path, key)
    assert small["dvclive/metrics.json"]["step"] == large["dvclive/metrics.json"]["step"] == 4

    # docs/experiments.md's readable table: changed params and the metrics, and no "!" (unreadable)
    # cell in an experiment's row (the base commit never ran: its row is all "!")
    table = dvc("exp", "show", "--md", "--only-changed", "--drop", DOCS_DROP, cwd=repo)
    header, *rows = [line for line in table.splitlines() if line.startswith("|")]
    for column in ("fid", "data/validate/summary.json:accepted", "data/faces/summary.json:accepted",
                   "appids.limit"):  # fmt: skip
        assert column in header
    assert "pipeline/" not in header and "reasons." not in header  # the deps and details
    experiments = [row for row in rows if "[small]" in row or "[large]" in row]
    assert len(experiments) == 2 and not any("!" in row for row in experiments)

    # `steamgan experiments`: the same runs in 120 columns, piped (no terminal)
    shown = subprocess.run(
        [sys.executable, "-m", "stages.cli", "experiments"],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120, shown.stdout
    assert lines[0].split()[:2] == ["experiment", "fid"]
    assert {line.split()[0] for line in lines[1:3]} == {"small", "large"}
    assert "appids.limit=24" in shown.stdout and "…" not in lines[0]

    diff = json_out(dvc("plots", "diff", "small", "large", "--json", cwd=repo))
    curve = diff["data"]["dvclive/plots/metrics/loss/G.tsv"][0]
    points = curve["content"]["data"]["values"]
    assert sorted((p["rev"], int(p["step"])) for p in points) == sorted(
        (rev, step) for rev in ("small", "large") for step in range(1, 5)
    )
    grids = diff["data"]["dvclive/plots/images/samples/0000004.png"]
    assert {rev for grid in grids for rev in grid["revisions"]} == {"small", "large"}
    assert all(Path(grid["url"]).is_file() for grid in grids)
    # render and report did not run in these experiments: theirs are the only plots without data
    missing = {e["name"] for e in diff.get("errors") or []}
    assert missing <= {"data/render/images", "data/report/funnel.svg"}
