"""No import cycle in clipdb: every import counts, at module level, inside functions and under
``TYPE_CHECKING``, so a cycle cannot hide behind a function-level import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clipdb"

# Cycles that stand today, each through a package ``__init__`` that imports one of its
# submodules inside a function while that submodule imports names from the ``__init__``
# (safe only because the function runs after the package finished importing). Breaking them
# means moving those names out of the ``__init__``. Delete an entry once it no longer occurs;
# never add one for new code.
KNOWN_CYCLES = {
    frozenset({"clipdb.db", "clipdb.db.migrate", "clipdb.db.replica"}),
    frozenset({"clipdb.dupes", "clipdb.dupes.collapse", "clipdb.search"}),
    frozenset({"clipdb.serve", "clipdb.serve.app", "clipdb.serve.server"}),
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package folder)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports, anywhere in it.

    ``from package import name`` depends on the submodule where ``name`` is one, else on the
    package itself (its ``__init__`` must have run far enough to define ``name``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return (found & known) - {name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    names = module_names(root)
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_clipdb_has_no_new_import_cycle() -> None:
    new = cycles(import_graph()) - KNOWN_CYCLES
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)


def test_the_encoders_package_is_in_the_graph_and_acyclic() -> None:
    graph = import_graph()
    assert graph["clipdb.encoders.factory"] >= {
        "clipdb.encoders.openvino",
        "clipdb.encoders.torch",
    }
    assert not any(any(m.startswith("clipdb.encoders") for m in c) for c in cycles(graph))


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from . import a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
    )
    (package / "d.py").write_text("import pkg.c\n")
    assert cycles(import_graph(package)) == {
        frozenset({"pkg.a", "pkg.b"}),
        frozenset({"pkg.c", "pkg.d"}),
    }
