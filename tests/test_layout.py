"""The layout's rules, read from the import graph (grimp: every import, those inside functions and
under TYPE_CHECKING included) and the code: no import cycle, Docker only inside the runtimes, code
above the runtimes that never loads an engine nor asks which runtime it holds, a node that never
imports the orchestrator."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import grimp
import pytest

from orchestrator.runtimes import RUNTIMES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "node", "common")
RUNTIME_KINDS = ("Runtime", "Deployment", "Sampler", "Collector")
ENGINE_MODULES = (
    "orchestrator.runtimes.docker",
    "orchestrator.runtimes.local",
    "orchestrator.runtimes.swarm",
)  # and what starts so
# the Docker testbed's own commands: the command line loads them when one of them runs
DOCKER_COMMANDS = "orchestrator.runtimes.docker_commands"


def modules_above_runtimes() -> dict[str, Path]:
    """Every module of the orchestrator outside orchestrator/runtimes/, by name."""
    out = {}
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[:2] != ("orchestrator", "runtimes"):
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(*packages: str, external: bool = False) -> grimp.ImportGraph:
    return grimp.build_graph(*packages, include_external_packages=external, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One shortest cycle through each import that is part of one (a package's __init__ is a module
    of its own: a submodule importing its package, which imports it back, is a cycle)."""
    cycles: dict[frozenset[str], tuple[str, ...]] = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycle = (importer, *back)
                cycles.setdefault(frozenset(cycle), cycle)
    return list(cycles.values())


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return import_graph(*PACKAGES, external=True)


def test_the_cycle_finder_sees_imports_inside_functions_and_through_a_package(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from cyclic.a import run\n")
    (pkg / "a.py").write_text("def run():\n    from cyclic import run as again\n    return again\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(import_graph("cyclic")) == [("cyclic", "cyclic.a", "cyclic")]


def test_no_import_cycle(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_runtimes_import_docker(graph):
    importers = graph.find_modules_that_directly_import("docker")
    outside = sorted(m for m in importers if not m.startswith("orchestrator.runtimes."))
    assert not outside, f"import the docker package outside orchestrator/runtimes/: {outside}"


def test_node_and_common_never_import_the_orchestrator(graph):
    for package in ("node", "common"):
        chain = graph.find_shortest_chain(importer=package, imported="orchestrator", as_packages=True)
        assert chain is None, f"{package} reaches the orchestrator: {' -> '.join(chain)}"
    assert graph.find_shortest_chain(importer="common", imported="node", as_packages=True) is None


def test_nothing_above_the_runtimes_imports_an_engine(graph):
    modules = modules_above_runtimes()
    assert {"orchestrator.run", "orchestrator.cli", "orchestrator.profiling.measure"} <= set(modules)
    found = sorted(
        f"{m} imports {imported}"
        for m in modules
        for imported in graph.find_modules_directly_imported_by(m)
        if (imported.startswith(ENGINE_MODULES) and imported != DOCKER_COMMANDS) or imported.split(".")[0] == "docker"
    )
    assert not found, "engine modules imported above orchestrator/runtimes/:\n" + "\n".join(found)


def runtime_isinstance_checks(source: str) -> list[str]:
    """`isinstance` calls whose class is a runtime, deployment or stats sampler, as `line: code`."""
    tree = ast.parse(source)
    from_runtimes = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestrator.runtimes")
        for alias in node.names
    }
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"):
            continue
        if len(node.args) != 2:
            continue
        classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
        names = [ast.unparse(c).rsplit(".", 1)[-1] for c in classes]
        if any(n in from_runtimes or n.endswith(RUNTIME_KINDS) for n in names):
            found.append((node.lineno, f"{node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(found)]


def test_the_runtime_check_finds_isinstance_on_a_runtime():
    source = textwrap.dedent(
        """
        from orchestrator.runtimes.docker import DockerDeployment
        from orchestrator.runtimes import local
        a = isinstance(dep, DockerDeployment)
        b = isinstance(rt, (int, local.LocalRuntime))
        c = isinstance(x, dict)
        """
    )
    assert runtime_isinstance_checks(source) == [
        "4: isinstance(dep, DockerDeployment)",
        "5: isinstance(rt, (int, local.LocalRuntime))",
    ]


def runtime_name_comparisons(source: str) -> list[str]:
    """Comparisons with a runtime's name (`rt == "docker"`, `name in ("local", ...)`), as `line: code`."""

    def names_one(node: ast.expr) -> bool:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return any(isinstance(x, ast.Constant) and x.value in RUNTIMES for x in items)

    return [
        f"{node.lineno}: {ast.unparse(node)}"
        for node in sorted(ast.walk(ast.parse(source)), key=lambda n: getattr(n, "lineno", 0))
        if isinstance(node, ast.Compare) and any(names_one(x) for x in (node.left, *node.comparators))
    ]


def test_the_runtime_check_finds_a_comparison_with_a_runtime_name():
    source = textwrap.dedent(
        """
        a = runtime == "local"
        b = "docker" != dep.runtime
        c = name in ("auto", "docker")
        d = name == "docker-compose" or kind == "locally"
        """
    )
    assert runtime_name_comparisons(source) == [
        "2: runtime == 'local'",
        "3: 'docker' != dep.runtime",
        "4: name in ('auto', 'docker')",
    ]


@pytest.mark.parametrize("check", [runtime_isinstance_checks, runtime_name_comparisons])
def test_nothing_above_the_runtimes_asks_which_runtime_it_holds(check):
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules_above_runtimes().values()
        for line in check(path.read_text())
    ]
    assert not found, "code above orchestrator/runtimes/ asks which runtime it holds:\n" + "\n".join(found)
