"""The package's layers: imports run one way, from app down to errors (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flower_eec"
# Higher imports lower, never the reverse; equal ranks may import each other only within a layer.
RANK = {"errors": 0, "topology": 1, "progress": 1, "noise": 1, "models": 2, "data": 2, "core": 3,
        "protocol": 4, "grid": 5, "strategies": 6, "clients": 6, "run": 7, "app": 8}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("flower_eec")):
            if node.module == "flower_eec":
                found += [f"flower_eec.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("flower_eec")]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer() -> None:
    layers = {_layer("flower_eec." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
              for p in _modules()}
    assert layers <= set(RANK), f"modules outside the known layers: {layers - set(RANK)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _layer("flower_eec." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    for target in _imports(path):
        other = _layer(target)
        if other == own:
            continue
        assert RANK[other] < RANK[own], f"{path.name} ({own}) imports {target} ({other})"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from flower_eec.run.config import Config\n"
                   "def f():\n    from flower_eec.app import client_app\n")
    assert _imports(bad) == ["flower_eec.run.config", "flower_eec.app"]
    assert RANK[_layer("flower_eec.run.config")] > RANK["core"]
