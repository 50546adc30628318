"""Import cycles among a package's modules: `python -m facepipe.tools.import_graph [PACKAGE_DIR]`.

Reads the source with `ast` (nothing is imported), so an import inside a function counts like one
at module top: it still runs, only later, and a cycle through it is still a tangle of concerns.
An edge goes to the deepest module that exists: `from facepipe.data import pack` is an edge to
`facepipe.data.pack`, `from facepipe.data.pack import pack` too; a package's `__init__` is not
added for each submodule imported through it (re-exporting packages would otherwise all be cycles).
Prints each cycle (one path per strongly connected component, each edge with its file:line) and
exits 1, or prints "no cycle among N modules" and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

Graph = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the first such import}


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file for every module under `package_dir` (whose name is the package's)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load, most specific first per alias."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        # `from . import x` in a.b.c means a.b.x; in a/b/__init__.py the package a.b is the anchor.
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def build_graph(package_dir: Path) -> Graph:
    modules = module_names(package_dir)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _imported(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                # `from a.b import c`: c is a submodule (edge to a.b.c) or a name in a.b (edge to a.b).
                found = [t for t in targets[:-1] if t in modules] or [targets[-1]]
            else:
                found = targets
            for target in found:
                while target and target not in modules:  # `import a.b.attr` style: nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, f"{path.relative_to(package_dir.parent)}:{node.lineno}")
    return graph


def _reachable(graph: Graph, start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        if (node := todo.pop()) not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def strongly_connected(graph: Graph) -> list[list[str]]:
    """The groups of modules that all reach each other (a package has ~100: no need for Tarjan)."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {frozenset(m for m in reach[n] if n in reach[m]) for n in graph if n in reach[n]}
    return sorted(sorted(group) for group in groups)


def cycle_path(graph: Graph, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start, members = component[0], set(component)
    parent = {start: ""}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not strongly connected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1]
    parser.add_argument("package_dir", nargs="?", type=Path, default=default,
                        help=f"the package's folder (default: {default})")
    package_dir = parser.parse_args(argv).package_dir
    graph = build_graph(package_dir)
    components = strongly_connected(graph)
    for component in components:
        path = cycle_path(graph, component)
        print(f"cycle among {len(component)} modules: {', '.join(component)}")
        for a, b in zip(path, path[1:]):
            print(f"  {a} -> {b}  ({graph[a][b]})")
    if components:
        return 1
    print(f"no cycle among {len(graph)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
