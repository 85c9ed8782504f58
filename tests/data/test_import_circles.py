"""No import circle among the modules of the data layer (issue 15), counting imports made only
for type checking: a circle there still ties the modules' designs together."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (absolute or relative imports)."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                head = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join([*head, *(node.module.split(".") if node.module else [])])
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            for target in targets:
                # the deepest module of the package that the import names
                parts = target.split(".")
                for k in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:k])
                    if candidate in modules:
                        if candidate != name:
                            found.add(candidate)
                        break
        graph[name] = found
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per circle found by depth-first search."""
    circles, state = [], dict.fromkeys(graph, 0)

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [node])
    return circles


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's `__init__` re-exports its modules; a module importing a sibling goes through
    the package, which is not a circle of design."""
    packages = {name for name in graph if (ROOT / name.replace(".", "/")).is_dir()}
    return {
        name: {t for t in targets if not (t in packages and name.startswith(t + "."))}
        for name, targets in graph.items()
    }


def test_no_import_circle_in_the_data_layer() -> None:
    circles = _circles(_without_package_inits(_graph("data")))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
