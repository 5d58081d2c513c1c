import os
import subprocess
import sys

import pytest

from stages.cli import COMMANDS, STAGES
from tests.conftest import REPO, run_cli

ORDER = ["appids", "download", "validate", "faces", "resize", "dataset", "train", "mix",
         "reference", "evaluate", "render", "translate", "report"]  # fmt: skip


def test_steamgan_lists_every_stage_and_command():
    result = run_cli("--help")
    assert result.exit_code == 0
    for name in [*ORDER, *COMMANDS]:
        assert name in result.output
    assert list(STAGES) == ORDER
    assert list(COMMANDS) == ["fid", "kid", "set-args", "experiments", "mirror"]


@pytest.mark.parametrize("command", ["fid", "kid"])
def test_compare_commands_take_two_paths_and_the_inception_options(command):
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    for option in ("PATH_A", "PATH_B", "--resize", "--batch-size", "--device"):
        assert option.lower() in result.output.lower()


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help_shows_params_and_set(stage):
    result = run_cli(stage, "--help")
    assert result.exit_code == 0
    assert "--params" in result.output and "-S" in result.output
    assert "Params (params.yaml, or -S key=value):" in result.output


def test_stage_help_lists_every_key_of_its_section_with_default_and_meaning():
    from pipeline.params import FacesParams

    result = subprocess.run(
        [sys.executable, "-m", "stages.faces", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for key in FacesParams.model_fields:
        assert f"faces.{key}" in text
    assert "faces.retinaface.variant = resnet50_ternaus # resnet50_ternaus (seeds)" in text
    assert "faces.threads = auto # torch CPU threads" in text
    assert "faces.resolutions = ['original', 256]" in text
    reference = run_cli("reference", "--help").output
    assert "reference.max_images" in reference and "evaluate.one_face.weights" in reference


def test_python_dash_m_runs_a_stage():
    result = subprocess.run(
        [sys.executable, "-m", "stages.resize", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--params" in result.stdout


def test_bad_override_is_one_line(params_file):
    result = run_cli("resize", "-S", "resize.mode=squash")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "steamgan resize: error: -S resize.mode=squash: resize.mode: 'squash' is not allowed: "
        "Input should be 'stretch', 'crop' or 'pad'"
    )


def test_typo_in_params_file_is_one_line(params_file):
    params_file.write_text(params_file.read_text().replace("  mirror:", "  mirorr:"))
    result = run_cli("dataset")
    assert result.exit_code == 1
    assert result.output.startswith("steamgan dataset: error: params.yaml: dataset.mirorr: unknown")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["fid", "kid"])
def test_compare_checks_both_inputs_before_computing(command, tmp_path):
    """B empty or missing is reported at once, before A's features are computed (which would
    load Inception: its weights are not in this empty weights folder)."""
    from PIL import Image

    a, empty = tmp_path / "a", tmp_path / "empty"
    a.mkdir()
    empty.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(a / f"{i}.png")
    weights = ["--weights-dir", str(tmp_path / "no-weights")]
    result = run_cli(command, str(a), str(empty), *weights)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"steamgan {command}: error: {empty}: 0 image(s) (.png, .jpg, .jpeg, .webp); "
        "need at least 2"
    )
    result = run_cli(command, str(a), str(tmp_path / "nope"), *weights)
    assert result.exit_code == 1 and f"{tmp_path / 'nope'}: no such folder or file" in result.output
