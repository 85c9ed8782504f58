"""The layers of DESIGN.md: ctit -> training -> serving -> features -> data, downward only, and no
import circle between our modules, inside a layer or across layers."""

import ast
from collections.abc import Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["data", "features", "serving", "training", "ctit"]
#: Circles still allowed, each a frozenset of the modules in it. None: add nothing here.
KNOWN_CIRCLES: frozenset[frozenset[str]] = frozenset()


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ORDER)
def test_imports_go_downward_only(package: str) -> None:
    allowed = set(ORDER[: ORDER.index(package) + 1])
    forbidden = set(ORDER) - allowed
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & forbidden
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "upward imports break the layers:\n" + "\n".join(offenders)


def test_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import training.run\nfrom serving import app\n", encoding="utf-8")
    assert _imported_top_levels(module) == {"training", "serving"}


def _reachable(edges: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def circles(edges: Mapping[str, set[str]]) -> set[frozenset[str]]:
    """The import circles of a module graph: each set of modules that all import one another,
    directly or not (strongly connected components of more than one module)."""
    reach = {module: _reachable(edges, module) for module in edges}
    out = set()
    for module, downstream in reach.items():
        members = frozenset({module} | {other for other in downstream if module in reach[other]})
        if len(members) > 1:
            out.add(members)
    return out


def _import_graph() -> tuple[grimp.ImportGraph, dict[str, set[str]]]:
    # Imports inside functions count too: a deferred import only hides a circle.
    graph = grimp.build_graph(*ORDER, cache_dir=None)
    edges = {
        module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules
    }
    return graph, edges


def test_no_import_circles_between_modules() -> None:
    graph, edges = _import_graph()
    found = circles(edges)
    unexpected = found - KNOWN_CIRCLES
    lines = []
    for circle in sorted(unexpected, key=sorted):
        lines.append(" <-> ".join(sorted(circle)))
        for importer in sorted(circle):
            for imported in sorted(edges[importer] & circle):
                details = graph.get_import_details(importer=importer, imported=imported)
                at = ", ".join(str(d["line_number"]) for d in details)
                lines.append(f"    {importer} imports {imported} (line {at})")
    assert not unexpected, "import circles between modules:\n" + "\n".join(lines)


def test_circle_check_sees_indirect_circles_and_not_chains() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set()}
    assert circles(edges) == {frozenset({"a", "b", "c"})}
    assert circles({"x": {"y"}, "y": set()}) == set()
