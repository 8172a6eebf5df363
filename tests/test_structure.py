"""The package stays a size a newcomer can hold: short modules and functions, no import cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_mirnet"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: a function longer than MAX_FUNCTION_LINES states why in a comment on the line above its ``def``
#: (or above its first decorator) that starts with this
REASON = "# long:"


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring."""
    body = node.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:]
    if not body:
        return 0
    return node.end_lineno - body[0].lineno + 1


def _stated(lines: list[str], node) -> bool:
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return first >= 2 and lines[first - 2].strip().startswith(REASON)


def test_no_module_is_longer_than_the_limit():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_longer_than_the_limit_without_a_stated_reason():
    found = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES and not _stated(lines, node):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines with no '{REASON} ...' comment above: {found}"


def test_the_rule_sees_a_long_function_and_its_reason():
    """The check above can fail: a 61-line function is found, and a reason above it clears it."""
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    for head, stated in (("x = 0\n", False), ("# long: 61 steps read best in one place\n", True)):
        text = f'{head}def f():\n    """doc"""\n{body}\n'
        node = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef))
        assert _body_lines(node) == 61
        assert _stated(text.splitlines(), node) is stated


def test_no_import_cycle_in_the_package():
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(PACKAGE.parent))
    graph = grimp.build_graph(PACKAGE.name, cache_dir=None)
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if a != b and graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
