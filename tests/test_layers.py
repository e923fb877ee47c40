"""The layers of CONTRIBUTING.md, checked on the source: every import of every module
(function-level ones too) goes down the layers, there is no import cycle, shared modules
never import a protocol, and a protocol reaches another only through its client module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iotctl"

# the shared layer, bottom (0) to top; a module may import its own rank or lower
RANKS = {
    "iotctl": 0, "iotctl.errors": 0, "iotctl.settings": 0, "iotctl.registry": 0, "iotctl.message": 0,
    "iotctl.trace": 0, "iotctl.output.console": 0, "iotctl.aioloop": 0,
    "iotctl.interrupts": 0, "iotctl.connection": 0, "iotctl.deadline": 1, "iotctl.histogram": 0, "iotctl.express": 0,
    "iotctl.tls": 1, "iotctl.codecs": 1, "iotctl.background": 1, "iotctl.output.template": 1, "iotctl.topics": 1,
    "iotctl.endpoint": 2, "iotctl.payload": 2, "iotctl.output.writers": 2,
    "iotctl.output.renderers": 3, "iotctl.output.pretty": 3, "iotctl.output": 3,
    "iotctl.profiles": 4, "iotctl.receive": 4, "iotctl.send": 4, "iotctl.bridging": 5, "iotctl.benching": 5, "iotctl.checking": 4,
    "iotctl.watching": 5, "iotctl.watchscreen": 6,
    "iotctl.options": 5,
    "iotctl.groups": 6,
    "iotctl.resolver": 7,  # the URL endpoint resolver: builds a protocol's command context
}
TOP = 7  # cli, __main__, commands.*, protocols.*
from iotctl.registry import libraries as _protocol_libraries

LIBRARIES = _protocol_libraries() | {"cbor2", "rich"}  # each protocol names its own in the registry
LIBRARY_MODULES = ("client.py", "server.py")  # the modules of a protocol that may import its library


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in MODULES else base, id(node) in top_level))
    return out


def _internal_graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(name, path) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def _rank(name: str) -> int:
    return RANKS.get(name, TOP)


def test_every_shared_module_has_a_rank():
    shared = [m for m in MODULES if not m.startswith(("iotctl.protocols", "iotctl.commands"))
              and m not in ("iotctl.cli", "iotctl.__main__", "iotctl.entry")]
    assert sorted(set(shared) - set(RANKS)) == []


def test_no_import_cycle():
    graph = _internal_graph()
    cycles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_go_down_the_layers():
    upward = [f"{name} -> {dep}" for name, deps in _internal_graph().items() for dep in deps
              if _rank(dep) > _rank(name)]
    assert upward == []


def test_settings_is_the_leaf():
    assert _internal_graph()["iotctl.settings"] == set()


def test_shared_modules_never_import_a_protocol():
    bad = [f"{name} -> {dep}" for name, deps in _internal_graph().items() for dep in deps
           if not name.startswith("iotctl.protocols") and dep.startswith("iotctl.protocols")]
    assert bad == []


def test_a_protocol_reaches_another_only_through_its_client():
    bad = []
    for name, deps in _internal_graph().items():
        if not name.startswith("iotctl.protocols."):
            continue
        own = name.split(".")[2]
        for dep in deps:
            if dep.startswith("iotctl.commands"):
                bad.append(f"{name} -> {dep}")
            if dep.startswith("iotctl.protocols.") and dep.count(".") >= 2:
                other = dep.split(".")[2]
                if other != own and dep != f"iotctl.protocols.{other}.client":
                    bad.append(f"{name} -> {dep}")
    assert bad == []


def test_protocol_libraries_only_in_client_modules_or_function_bodies():
    bad = []
    for name, path in MODULES.items():
        allowed = name.startswith("iotctl.protocols.") and path.name in LIBRARY_MODULES
        for dep, top_level in _imports(name, path):
            if dep.split(".")[0] in LIBRARIES and top_level and not allowed:
                bad.append(f"{name} imports {dep} at module level")
    assert bad == []


@pytest.mark.parametrize("rule", ["cycle", "upward", "protocol"])
def test_the_checks_catch_a_violation(rule, monkeypatch):
    """The checks above can fail: each is shown a graph with the violation it looks for."""
    graph = _internal_graph()
    if rule == "cycle":
        graph["iotctl.settings"] = {"iotctl.output"}
        graph["iotctl.output"] = graph["iotctl.output"] | {"iotctl.settings"}
        monkeypatch.setattr(sys.modules[__name__], "_internal_graph", lambda: graph)
        with pytest.raises(AssertionError):
            test_no_import_cycle()
    elif rule == "upward":
        graph["iotctl.payload"] = graph["iotctl.payload"] | {"iotctl.options"}
        monkeypatch.setattr(sys.modules[__name__], "_internal_graph", lambda: graph)
        with pytest.raises(AssertionError):
            test_imports_go_down_the_layers()
    else:
        graph["iotctl.protocols.coap.cli"] = graph["iotctl.protocols.coap.cli"] | {"iotctl.protocols.mqtt.cli"}
        monkeypatch.setattr(sys.modules[__name__], "_internal_graph", lambda: graph)
        with pytest.raises(AssertionError):
            test_a_protocol_reaches_another_only_through_its_client()
