"""The package's layers, read from the source: no import cycle, nothing imports upward.

Every `import` in every module under src/hpcinfer counts, at the top or inside a function (a
lazy import is still a dependency: it runs the first time that function does). Only imports
under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hpcinfer

ROOT = Path(hpcinfer.__file__).parent
PACKAGE = "hpcinfer"

# core is the bottom layer (with spec, errors, records and the adapters): it imports no peer,
# and not cluster either (cluster.allocation reads durations from core: the binding's type
# lives in core.binding_env).
CORE_MUST_NOT_IMPORT = (
    "run", "serve", "bench", "submit", "stage", "report", "cli", "engines", "cluster", "api",
    "profile", "raycluster", "provision",
)  # fmt: skip
# The spec layer: the JobSpec and its sections, read by every command and adapter.
SPEC_LAYER = ("spec", "job_script_spec", "script_values")
# serve and bench are peers of run: what they share with it lives in core.
PEERS_OF_RUN = ("serve", "bench")
# The adapters and data (engines, cluster, launch, inputs, outputs) stand below every command
# package: a dispatcher engine reads the endpoints registry from core, not from serve.
ADAPTERS = ("engines", "cluster", "launch", "inputs", "outputs")
COMMANDS = (
    "run", "serve", "bench", "submit", "stage", "report", "cli", "api", "raycluster", "provision",
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below `node`, skipping `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child)


def _owning_module(name: str) -> str | None:
    """The module of ours that `name` (a module or a name in one) belongs to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, statement: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            yield alias.name
        return
    base = statement.module or ""
    if statement.level:  # relative: from the package this module is in
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        parts = package.split(".")[: len(package.split(".")) - statement.level + 1]
        base = ".".join([*parts, base] if base else parts)
    for alias in statement.names:
        # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text("utf-8"), str(path))
        found = set()
        for statement in _imports(tree):
            for target in _targets(module, statement):
                owner = _owning_module(target) if target.split(".")[0] == PACKAGE else None
                if owner is not None and owner != module:
                    found.add(owner)
        graph[module] = found
    return graph


GRAPH = import_graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # iterative Tarjan: no recursion limit on deep chains
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A path a -> b -> ... -> a inside one strongly connected component, to name in a failure."""
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                frontier.append(child)
    return sorted(members)


def _in(module: str, package: str) -> bool:
    return module == f"{PACKAGE}.{package}" or module.startswith(f"{PACKAGE}.{package}.")


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {target}"
        for module, targets in sorted(GRAPH.items())
        if any(_in(module, p) for p in importers)
        for target in sorted(targets)
        if any(_in(target, p) for p in forbidden)
    ]


def _imports_outside(package: str, allowed: tuple[str, ...]) -> list[str]:
    """What `package` imports beyond `allowed`; the package must exist, so that a renamed
    one does not pass by having no modules to check."""
    assert any(_in(m, package) for m in GRAPH), f"the {package} package is missing"
    return [
        f"{module} imports {target}"
        for module, targets in sorted(GRAPH.items())
        if _in(module, package)
        for target in sorted(targets)
        if not any(_in(target, p) for p in allowed)
    ]


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader itself: a top-level, a function-level and a from-package import count."""
    assert "hpcinfer.run.fleet_job" in GRAPH["hpcinfer.run.job"]  # lazy, inside run_job
    assert "hpcinfer.core.processes" in GRAPH["hpcinfer.run.spawn"]  # top level
    assert "hpcinfer.cluster" in GRAPH["hpcinfer.run.spawn"]  # `from hpcinfer.cluster import`
    assert len(GRAPH) > 100


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_serve_and_bench_import_nothing_from_run() -> None:
    found = _violations(PEERS_OF_RUN, ("run",))
    assert not found, "serve/bench import run (move what they share to core):\n" + "\n".join(found)


def test_core_imports_no_layer_above_it() -> None:
    found = _violations(("core",), CORE_MUST_NOT_IMPORT)
    assert not found, "core imports a layer above it:\n" + "\n".join(found)


def test_the_spec_layer_imports_no_command_package() -> None:
    """Reading a spec (its `job:` section included) needs nothing from `submit` or any
    other command."""
    found = _violations(SPEC_LAYER, (*COMMANDS, "profile"))
    assert not found, "the spec layer imports a command package:\n" + "\n".join(found)


def test_adapters_import_no_command_package() -> None:
    found = _violations(ADAPTERS, COMMANDS)
    assert not found, "an adapter imports a command package above it:\n" + "\n".join(found)


# The trace analysis is a library users call on any trace folder: it stands on core and
# errors only (plus the standard library and ijson, numpy, pydantic).
TRACES_MAY_IMPORT = ("traces", "core", "errors")


def test_traces_imports_only_core_and_errors() -> None:
    found = _imports_outside("traces", TRACES_MAY_IMPORT)
    assert not found, "hpcinfer.traces imports above core/errors:\n" + "\n".join(found)


# Provisioning renders files from a cluster file and drives its nodes: it reads hardware
# profiles (cluster), writes atomically (outputs), reaches nodes through the ssh launcher's
# command (launch) and stands on core, errors and logtail; it starts no server or run. Its one
# engine is the verify answer (provision.answer): hpcinfer's own offline vLLM engine (engines,
# with the shared vocabulary spec and records), so a node is checked the way `run` uses it.
PROVISION_MAY_IMPORT = (
    "provision", "cluster", "outputs", "launch", "core", "errors", "logtail",
    "engines", "spec", "records",
)  # fmt: skip


def test_provision_imports_only_profiles_outputs_core_and_errors() -> None:
    found = _imports_outside("provision", PROVISION_MAY_IMPORT)
    assert not found, "hpcinfer.provision imports a layer it must not:\n" + "\n".join(found)


def test_a_cycle_is_found_and_named() -> None:
    """The check can fail: a made-up graph with a cycle gives it back as a path."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
