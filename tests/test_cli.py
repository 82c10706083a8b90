"""The diffeval command: version, help, strict parsing, exit codes."""

import subprocess
import sys

import pytest
import torch

import diffeval
from diffeval.cli.main import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "diffeval", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"diffeval {diffeval.__version__}"
    out = subprocess.run([sys.executable, "-m", "diffeval", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--bogus"],
        ["demo", "--ste", "5"],  # abbreviations are not accepted
        ["demo", "--steps", "0"],
        ["demo", "--n", "-3"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_errors_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "5000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "steps out of range" in err and "Fix:" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--device", "cuda", "--no-progress"]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_the_python_guide_example_runs():
    """docs/python.md's evaluation example is executed as written."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "python.md").read_text()
    block = re.search(r"## Evaluating a sampler\s+```python\n(.*?)```", guide, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/python.md", "exec"), namespace)
    assert 0 < namespace["result"]["fid"].value < 40
