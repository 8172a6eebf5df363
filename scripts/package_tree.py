"""Print the package's modules with their line counts and first docstring lines, and its import cycles.

Used for the notes on the package's shape: ``python scripts/package_tree.py [ROOT]`` (default: the
``napari_mirnet`` folder beside this script's folder; give another checkout's to compare).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path):
    """(dotted name, lines, first docstring line) for each module below ``root``, in tree order."""
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, len(text.splitlines()), doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"


def cycles(root: Path) -> list[tuple[str, str]]:
    """Pairs of the package's modules that import each other, directly or through others."""
    import grimp

    sys.path.insert(0, str(root.parent))
    graph = grimp.build_graph(root.name, cache_dir=None)
    found = []
    for a in sorted(graph.modules):
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            if a < b and graph.chain_exists(importer=b, imported=a):
                found.append((a, b))
    return found


def top_level_graph(root: Path) -> dict[str, list[str]]:
    """For each of the package's top-level modules and subpackages, the others it imports."""
    import grimp

    sys.path.insert(0, str(root.parent))
    graph = grimp.build_graph(root.name, cache_dir=None)
    top = sorted({".".join(m.split(".")[:2]) for m in graph.modules if m != root.name})
    edges = {}
    for a in top:
        inside = {m for m in graph.modules if m == a or m.startswith(a + ".")}
        found = set()
        for m in inside:
            for b in graph.find_modules_directly_imported_by(m):
                b2 = ".".join(b.split(".")[:2])
                if b2 != a and b2 in top:
                    found.add(b2.split(".", 1)[1])
        edges[a.split(".", 1)[1]] = sorted(found)
    return edges


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "napari_mirnet"
    total = 0
    for name, n, doc in modules(root):
        total += n
        print(f"{n:5d}  {name:45s} {doc[:110]}")
    print(f"{total:5d}  total")
    found = cycles(root)
    print("import cycles:", "none" if not found else "")
    for a, b in found:
        print(f"  {a} <-> {b}")
    print("imports between top-level modules and subpackages (including imports inside functions):")
    for a, bs in top_level_graph(root).items():
        print(f"  {a:18s} -> {', '.join(bs) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
