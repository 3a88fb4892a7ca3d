"""The package's layers import only downward, and the config-only layers stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ctxext"

#: bottom to top; a module may import its own layer and the ones below it
LAYERS = ("base", "rope", "patching", "evaluation", "training", "search", "demo", "cli")
BASE = {"errors", "io", "loading", "data", "_compat", "lm_head"}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # ctxext/__init__.py: the lazy public names
    head = parts[1]
    if head in BASE:
        return "base"
    assert head in LAYERS, f"{module} is in no layer; add its folder to LAYERS"
    return head


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ctxext module `path` imports, at the top or inside a function, resolved to absolute names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ctxext"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ctxext":
                continue
            if node.module is None or target == "ctxext":  # from . import x: x may be a module
                found |= {f"{target}.{a.name}" for a in node.names}
            else:
                found.add(target)
    return found


def test_every_module_imports_only_its_own_layer_and_below():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        layer = _layer(source)
        if layer == "top":
            continue
        for target in _imports(path):
            if target == "ctxext.__version__" or target == "ctxext":
                continue
            target_layer = _layer(target)
            if target_layer == "top" or LAYERS.index(target_layer) > LAYERS.index(layer):
                upward.append(f"{source} ({layer}) imports {target} ({target_layer})")
    assert not upward, "\n".join(upward)


def test_the_config_only_modules_never_import_torch():
    code = (
        "import sys, ctxext, ctxext.rope, ctxext.rope.plan, ctxext.patching.checkpoint, ctxext.patching.info, "
        "ctxext.cli.app; ctxext.cli.app.build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_layer_walk_sees_relative_and_function_level_imports(tmp_path):
    # the walker itself: a relative import inside a function is found and resolved
    assert "ctxext.patching.model" in _imports(PACKAGE / "training" / "model.py")
    assert "ctxext.rope.layout" in _imports(PACKAGE / "evaluation" / "common.py")
