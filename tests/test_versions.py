"""The version policy: each dependency range has a lower bound, and CI's lowest run pins exactly those bounds."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_the_lowest_run_pins_every_direct_dependency_to_its_lower_bound():
    printed = subprocess.run([sys.executable, str(ROOT / ".ci" / "lowest.py")], capture_output=True, text=True,
                             check=True).stdout.split()
    pins = {Requirement(line).name: Requirement(line) for line in printed}
    for requirement in _requirements():
        (lower,) = [s.version for s in requirement.specifier if s.operator == ">="]
        assert str(pins[requirement.name].specifier) == f"=={lower}", requirement
        assert requirement.specifier.contains(lower), requirement  # the bound is inside its own range
    assert len(pins) == len(_requirements())


def test_a_dependency_without_a_lower_bound_is_refused(tmp_path):
    (tmp_path / ".ci").mkdir()
    script = (ROOT / ".ci" / "lowest.py").read_text()
    (tmp_path / ".ci" / "lowest.py").write_text(script)
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.13", "tqdm"]\n'
                                             '[project.optional-dependencies]\ndev = []\n')
    result = subprocess.run([sys.executable, str(tmp_path / ".ci" / "lowest.py")], capture_output=True, text=True)
    assert result.returncode != 0 and "'tqdm' in pyproject.toml has no lower bound" in result.stderr
