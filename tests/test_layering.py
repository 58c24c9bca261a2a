"""The three packages import one way: ``backends`` (the shared base and the engines) <- ``servers`` <- ``bench``.

Every ``import``/``from ... import`` in a package's source, at module level or inside a function, is read with
``ast``; none may name a package above its own. ``servers/locustfile.py`` is the one exception the design card
fixes: it is the script locust loads by path (``locust -f servers/locustfile.py``), a client of the server that
no module of ``servers`` imports. See ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("backends", "servers", "bench")  # lowest first: a package may import those before it, never after
ENTRY_POINTS = {Path("servers/locustfile.py")}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in a source file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward_imports(package: str) -> list[str]:
    """``file: package`` for each import of a layer above ``package``."""
    above = set(LAYERS[LAYERS.index(package) + 1:])
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.relative_to(ROOT) in ENTRY_POINTS:
            continue
        found += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(imported_packages(path) & above)]
    return found


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_nothing_imports_upward(package: str) -> None:
    assert upward_imports(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from bench.load import runner\n    import servers.app\n")
    assert imported_packages(source) == {"os", "bench", "servers"}


# Modules that once re-exported the shared base from its old place; every import names the owner now.
OLD_ALIASES = ("bench.paths", "bench.venvs", "bench.yamlfile", "bench.models.registry", "bench.models.prepare")


@pytest.mark.parametrize("name", OLD_ALIASES)
def test_old_alias_modules_stay_gone(name: str) -> None:
    assert not (ROOT / (name.replace(".", "/") + ".py")).exists()
    users = [f"{path.relative_to(ROOT)}" for folder in (*LAYERS, "tests", "benchmarks")
             for path in sorted((ROOT / folder).rglob("*.py")) if name in _imported_modules(path)]
    assert users == []


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names
