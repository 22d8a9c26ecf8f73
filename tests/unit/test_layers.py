"""The layer rule of docs/design/layers.md, enforced: every `kalamdb` import in src/ (top-level or
inside a function) must be allowed by that page's table, and the Raft core imports no I/O.

The table is parsed from the page itself, so the documentation and the rule cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "kalamdb"
LAYERS_DOC = ROOT / "docs" / "design" / "layers.md"

BASE = {"kalamdb", "errors", "config", "config_upstream", "cells", "lifeline"}
ROOT_MAY_IMPORT = {"client"}  # the lazy `kalamdb.Client` shortcut

# What the pure Raft core may import: no sockets, files, clocks, threads, processes or logging.
CORE_STDLIB = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "typing",
               "abc", "bisect", "itertools", "functools", "heapq", "math", "random"}
CORE_THIRD_PARTY = {"msgpack"}  # message encoding: bytes in, bytes out
CORE_FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _rule() -> dict[str, set[str] | None]:
    """{package: allowed packages}, None meaning anything, from the table of layers.md."""
    rule: dict[str, set[str] | None] = {}
    for line in LAYERS_DOC.read_text().splitlines():
        m = re.fullmatch(r"\|\s*([a-z_]+)\s*\|\s*([^|]*?)\s*\|", line.strip())
        if not m or m.group(1) == "package":
            continue
        pkg, allowed = m.group(1), m.group(2)
        if allowed == "*":
            rule[pkg] = None
        elif allowed in ("—", "-", ""):
            rule[pkg] = set()
        else:
            rule[pkg] = {a.strip() for a in allowed.split(",")}
    return rule


def _unit_of(path: Path) -> str:
    """The layer unit a file belongs to: its top package, or the module name of a top-level file."""
    rel = path.relative_to(SRC).parts
    if len(rel) == 1:
        return "kalamdb" if rel[0] == "__init__.py" else rel[0][:-3]
    return rel[0]


def _target_unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "kalamdb":
        return None
    return parts[1] if len(parts) > 1 else "kalamdb"


def _kalamdb_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, unit) of every import of a kalamdb module; `from kalamdb import x` names x's unit."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                unit = _target_unit(alias.name)
                if unit:
                    found.append((node.lineno, unit))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "kalamdb":
                for alias in node.names:
                    is_module = (SRC / f"{alias.name}.py").exists() or (SRC / alias.name).is_dir()
                    found.append((node.lineno, alias.name if is_module else "kalamdb"))
            else:
                unit = _target_unit(node.module)
                if unit:
                    found.append((node.lineno, unit))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"relative import at line {node.lineno}: use absolute kalamdb.* imports")
    return found


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_table_names_every_package():
    rule = _rule()
    units = {_unit_of(p) for p in _sources()} - BASE
    assert units <= set(rule), f"packages missing from docs/design/layers.md: {sorted(units - set(rule))}"
    for pkg, allowed in rule.items():
        assert allowed is None or allowed <= set(rule) | BASE, f"{pkg} allows unknown packages"


def test_every_import_follows_the_layers():
    rule = _rule()
    bad = []
    for path in _sources():
        unit = _unit_of(path)
        for line, target in _kalamdb_imports(ast.parse(path.read_text(), str(path))):
            if target == unit or target in BASE:
                continue
            if unit in BASE:
                ok = unit == "kalamdb" and target in ROOT_MAY_IMPORT
            else:
                allowed = rule[unit]
                ok = allowed is None or target in allowed
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {unit} imports {target}")
    assert not bad, "imports against docs/design/layers.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted((SRC / "raft").glob("*.py")), ids=lambda p: p.name)
def test_the_raft_core_does_no_io(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "random" and any(a.name != "Random" for a in node.names):
                bad.append(f"line {node.lineno}: from random import anything but Random")
        for name in names:
            if name.startswith("kalamdb."):
                if not name.startswith("kalamdb.raft.") and name != "kalamdb.raft":
                    bad.append(f"line {node.lineno}: imports {name}")
            elif name not in CORE_STDLIB and name.split(".")[0] not in CORE_THIRD_PARTY:
                bad.append(f"line {node.lineno}: imports {name} (not pure)")
        # the global generator: random.random(), random.choice() ... (random.Random is fine)
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random"
                and node.attr != "Random"):
            bad.append(f"line {node.lineno}: random.{node.attr} uses the global generator")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CORE_FORBIDDEN_CALLS:
            bad.append(f"line {node.lineno}: calls {node.func.id}()")
    assert not bad, f"{path.name} must stay pure (docs/design/layers.md):\n" + "\n".join(bad)


def test_the_checks_catch_what_they_forbid():
    """The checks above can fail: a planted I/O import and a planted upward import are found."""
    planted = ast.parse("import socket\nfrom kalamdb.server import app\nrandom.random()\n")
    assert _kalamdb_imports(planted) == [(2, "server")]
    rule = _rule()
    assert "server" not in (rule["node"] or set())
    assert "socket" not in CORE_STDLIB
