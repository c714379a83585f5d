"""The shape of the code, read from the source (nothing is imported): no import cycle among our
modules, lazy imports inside functions included; no private name imported from another module;
the device-side benchmarks package never imports the compiler; pipeline/stages holds only stages;
TVM is imported only in the TVM package, the TVM stage, the runtimes and the runner's helpers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("pipeline", "benchmarks", "models")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of our own modules, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            if submodules:                                  # from pipeline.stages import check
                found += [(m, [], node.lineno) for m in submodules]
            others = [n for n in names if f"{node.module}.{n}" not in modules]
            if others or not submodules:
                found.append((node.module, others, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _sources()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(path, modules):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_lazy_or_not():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    modules = _sources()
    offenders = []
    for name, path in modules.items():
        for target, names, line in _imports(path, modules):
            offenders += [f"{path.relative_to(ROOT)}:{line} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert offenders == []


def test_benchmarks_never_import_the_compiler():
    """The runner travels to boards with build/<t> and benchmarks/ only."""
    graph = _graph()
    offenders = [f"{m} -> {t}" for m, targets in graph.items() if m.startswith("benchmarks")
                 for t in targets if not t.startswith("benchmarks")]
    assert offenders == []


def test_stages_package_holds_only_stages():
    from pipeline.stages import STAGES

    listed = {s.__name__ for s in STAGES}
    files = {_module_name(p) for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.stem != "__init__"}
    assert files == listed
    for stage in STAGES:
        assert {"NAME", "VERSION", "TOOLS", "Config", "run"} <= set(vars(stage)), stage.__name__


@pytest.mark.parametrize("module", ["pipeline.compiler", "pipeline.cli", "pipeline.tuning", "pipeline.tvm.records",
                                    "pipeline.targets", "benchmarks.gate", "benchmarks.report"])
def test_tvm_is_not_imported_at_module_level_outside_the_tvm_code(module):
    tree = ast.parse(_sources()[module].read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n == "tvm" or n.startswith("tvm.")]


# other projects' own names with a leading underscore, each with the reason it is needed
STDLIB_UNDERSCORED = {
    "os._exit",                                     # the standard library's immediate exit
    "converter._experimental_calibrate_only",       # TensorFlow's calibrate-only switch (its QuantizationDebugger's)
}


def test_no_private_attribute_of_another_object_is_used():
    """``compilation._converted`` style reach-ins: a private name is used only on self or cls."""
    offenders = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                        and ast.unparse(node) not in STDLIB_UNDERSCORED:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


MAX_LINES = 400
MAX_DOCSTRING_LINES = 8


def test_no_module_is_over_400_lines():
    """A module holds one job; past 400 lines it holds two (split it along its seam)."""
    long = {f"{p.relative_to(ROOT)}: {n}" for p in _sources().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == set()


def test_module_docstrings_say_what_and_what_must_hold_in_a_few_lines():
    """Long explanations belong in docs/ (docs/internals.md, module notes), not in the code."""
    long = {f"{p.relative_to(ROOT)}: {len(d.strip().splitlines())}" for p in _sources().values()
            if (d := ast.get_docstring(ast.parse(p.read_text()), clean=False))
            and len(d.strip().splitlines()) > MAX_DOCSTRING_LINES}
    assert long == set()


def test_emulation_is_qemu_only_and_test_only_code_lives_under_tests():
    """Set-up helpers are in pipeline/host_tools.py; the bare-metal x86 emulation serves only tests."""
    emulation = _sources()["pipeline.emulation"].read_text()
    assert "apt-get" not in emulation and "lavapipe" not in emulation.lower()
    assert not [p for p in (ROOT / "pipeline").rglob("*") if p.name.startswith("x86_")]


def test_running_a_tool_and_raising_with_its_stderr_is_written_once():
    """``subprocess.run`` with a returncode check and an error: pipeline/host_tools.run_tool, nowhere else."""
    offenders = []
    for name, path in _sources().items():
        text = path.read_text()
        if name != "pipeline.host_tools" and name.startswith("pipeline") and "subprocess.run(" in text \
                and "stderr" in text and "raise " in text and ".returncode" in text:
            offenders.append(name)
    assert offenders == []
