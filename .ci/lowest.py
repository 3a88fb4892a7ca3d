"""Print pip constraints that pin every direct dependency of ctxext to the lowest version its range claims.

    python .ci/lowest.py > constraints.txt
    pip install torch==2.13.0 -e ".[dev]" -c constraints.txt

pyproject.toml is the one place the ranges live; this reads them (the dependencies and the dev extra) and
turns each `>=X` into `==X`, so that CI's quick run against the lowest versions tests exactly the lower
bounds ctxext claims. A dependency without a lower bound is refused: its range would claim every version.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lowest(requirement: str) -> str:
    match = REQUIREMENT.match(requirement.split(";")[0])
    name, specifiers = match.group(1), match.group(2)
    bound = re.search(r">=\s*([0-9][^,\s]*)", specifiers)
    if bound is None:
        sys.exit(f".ci/lowest.py: {requirement!r} in pyproject.toml has no lower bound (>=); give it one.")
    return f"{name}=={bound.group(1)}"


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        print(lowest(requirement))


if __name__ == "__main__":
    main()
