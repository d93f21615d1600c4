"""The package's import graph: no cycles, and the layers import only downwards.

Every module of dllm_trt/ is parsed (ast, nothing imported): absolute ``dllm_trt.`` imports and
relative ones, at module level and inside functions (lazy imports count: a lazy cycle is still a
cycle of responsibilities, and it breaks as soon as someone hoists the import).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dllm_trt"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """The module a dotted name refers to: itself, or its parent when the last part is an attribute."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """dllm_trt modules that ``module`` imports (any depth in its body)."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            if t == "dllm_trt" or t.startswith("dllm_trt."):
                r = _resolve(t, known)
                if r and r != module:
                    out.add(r)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_parser_sees_every_kind_of_import(tmp_path):
    """The checker itself: absolute, relative (1 and 2 levels), `from pkg import submodule`, lazy imports."""
    known = {"dllm_trt", "dllm_trt.a", "dllm_trt.a.x", "dllm_trt.a.y", "dllm_trt.b", "dllm_trt.c", "dllm_trt.d"}
    src = tmp_path / "x.py"
    src.write_text("import os\nfrom . import y\nfrom ..b import thing\n"
                   "def f():\n    import dllm_trt.c\n    from dllm_trt import d\n")
    assert imports_of("dllm_trt.a.x", src, known) == {"dllm_trt.a.y", "dllm_trt.b", "dllm_trt.c", "dllm_trt.d"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_module_is_parsed(graph):
    assert len(graph) > 40
    for m in ("dllm_trt.contract", "dllm_trt.runtime.decode", "dllm_trt.runtime.backends.trt_backend",
              "dllm_trt.engine.builder", "dllm_trt.cli", "dllm_trt.profiling.cli"):
        assert m in graph, m
    assert "dllm_trt.contract" in graph["dllm_trt.runtime.backends.ort_backend"]


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly (the layering rules are about direct imports)."""
    return graph[start]


def _violations(graph, importer_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for m, deps in graph.items():
        if m == importer_prefix or m.startswith(importer_prefix + "."):
            for d in sorted(deps):
                if any(d == f or d.startswith(f + ".") for f in forbidden):
                    bad.append(f"{m} -> {d}")
    return bad


@pytest.mark.parametrize("importer,forbidden", [
    ("dllm_trt.runtime", ("dllm_trt.export", "dllm_trt.engine", "dllm_trt.calibration", "dllm_trt.profiling",
                          "dllm_trt.cli", "dllm_trt.plugins", "dllm_trt.serving")),
    ("dllm_trt.serving", ("dllm_trt.export", "dllm_trt.engine", "dllm_trt.calibration", "dllm_trt.profiling",
                          "dllm_trt.cli", "dllm_trt.plugins")),
    ("dllm_trt.plugins", ("dllm_trt.export", "dllm_trt.runtime.decode")),
    ("dllm_trt.profiling", ("dllm_trt.cli",)),
])
def test_layers_import_only_downwards(graph, importer, forbidden):
    assert _violations(graph, importer, forbidden) == []


def test_contract_is_the_bottom_layer(graph):
    assert graph["dllm_trt.contract"] <= {"dllm_trt", "dllm_trt.config", "dllm_trt.errors"}
    for m in ("dllm_trt.config", "dllm_trt.errors"):
        assert graph[m] <= {"dllm_trt", "dllm_trt.errors"}, (m, graph[m])


def test_root_package_and_moved_modules():
    """The root package imports only errors (contract reads __version__ from it); the TensorRT API loader
    and GPU discovery moved into the runtime, and the engine layer's old names are the same modules."""
    import dllm_trt.engine.api
    import dllm_trt.engine.gpu
    import dllm_trt.runtime.backends.gpu
    import dllm_trt.runtime.backends.trt_api
    from dllm_trt.engine import api as api_mod

    mods = _modules()
    assert imports_of("dllm_trt", mods["dllm_trt"], set(mods)) <= {"dllm_trt.errors"}
    assert dllm_trt.engine.api is dllm_trt.runtime.backends.trt_api is api_mod
    assert dllm_trt.engine.gpu is dllm_trt.runtime.backends.gpu
