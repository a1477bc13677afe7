"""Tests for the command line: ``jaxsep info`` via ``main`` and via ``python -m jaxsep``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jaxsep import cli

ROOT = Path(__file__).resolve().parents[1]


def totals(text: str) -> tuple[int, int]:
    params = re.search(r"Total params: ([\d,]+)", text).group(1)
    macs = re.search(r"Total multiply-adds: ([\d,]+)", text).group(1)
    return int(params.replace(",", "")), int(macs.replace(",", ""))


def test_info_prints_the_table_and_totals(capsys):
    assert cli.main(["info", "mobilenet_v1", "--variant", "cifar", "--width", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "Input shape: (1, 32, 32, 3)" in out
    assert "blocks.0.spatial.conv" in out and "DepthwiseConv" in out
    params, _ = totals(out)
    assert params == 215_642  # width 0.25: 470,072 with 1000 classes; 256 * 990 + 990 fewer


def test_info_options_reach_the_model(capsys):
    assert cli.main(["info", "mobilenet_v1", "--conv", "standard", "--resolution", "160"]) == 0
    out = capsys.readouterr().out
    assert "Input shape: (1, 160, 160, 3)" in out
    assert totals(out)[0] == 29_294_088
    assert cli.main(["info", "shufflenet_v1", "--groups", "8", "--variant", "cifar"]) == 0
    assert "Input shape: (1, 32, 32, 3)" in capsys.readouterr().out


def test_info_errors(capsys):
    assert cli.main(["info", "mobilenet_v1", "--conv", "grouped"]) == 2
    assert "conv='grouped' needs groups" in capsys.readouterr().err
    assert cli.main(["info", "mobilenet_v2", "--conv", "standard"]) == 2
    assert "mobilenet_v2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "resnet50"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main([])


def test_console_script_entry_point():
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["jaxsep"] == "jaxsep.cli:main"


def test_python_dash_m_prints_the_paper_totals():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-m", "jaxsep", "info", "mobilenet_v1", "--variant", "imagenet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    params, macs = totals(result.stdout)
    assert params == 4_231_976  # 4.21 M without BatchNorm's scale and bias: the paper's 4.2 M
    assert macs == pytest.approx(569e6, rel=0.02)
    assert "Params without normalization: 4,210,088" in result.stdout
