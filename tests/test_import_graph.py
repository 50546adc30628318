"""The import graph tool: the real facepipe tree has no cycle, and a planted one is found."""

from __future__ import annotations

from pathlib import Path

from facepipe.tools import import_graph

from tests.conftest import PROJECT_ROOT


def test_facepipe_has_no_import_cycle(capsys):
    assert import_graph.main([str(PROJECT_ROOT / "src" / "facepipe")]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("no cycle among ")


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cycle_through_a_function_level_import_is_found(tmp_path, capsys):
    pkg = _package(tmp_path / "pkg", {
        "__init__.py": "",
        "sub/__init__.py": "",
        # a -> b via `from package import submodule`, b -> c relative, c -> a inside a function.
        "sub/a.py": "from pkg.sub import b\n",
        "sub/b.py": "from .c import helper\n",
        "sub/c.py": "def helper():\n    from ..sub.a import thing\n    return thing\n",
        "leaf.py": "import pkg.sub.a\nimport os\n",
    })
    assert import_graph.main([str(pkg)]) == 1
    out = capsys.readouterr().out
    assert "cycle among 3 modules: pkg.sub.a, pkg.sub.b, pkg.sub.c" in out
    assert "pkg.sub.c -> pkg.sub.a  (pkg/sub/c.py:2)" in out
    assert "pkg.leaf" not in out


def test_edges_resolve_submodules_names_and_packages(tmp_path):
    pkg = _package(tmp_path / "pkg", {
        "__init__.py": "from . import x\n",
        "x.py": "from pkg.y import NAME\nimport pkg.z.deep.attr\n",
        "y.py": "NAME = 1\n",
        "z/__init__.py": "",
        "z/deep.py": "",
    })
    graph = import_graph.build_graph(pkg)
    assert set(graph["pkg"]) == {"pkg.x"}
    assert set(graph["pkg.x"]) == {"pkg.y", "pkg.z.deep"}
    assert import_graph.strongly_connected(graph) == []
