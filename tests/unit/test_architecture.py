"""The package's folders are its layers: imports run down the layers only, and never in a circle.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import still
ties the two modules together. README.md (Layout) and docs/architecture.md describe the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "Listener"

#: From the bottom up. A module may import from its own unit (the same subpackage or module) and from the
#: units of lower layers; never from a higher layer, and never from another unit of its own layer.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("Listener._version", "Listener.errors", "Listener.results"),
    ("Listener.core",),
    ("Listener.ops",),
    ("Listener.jobs",),
    ("Listener.config",),
    ("Listener.processing",),
    ("Listener.mqtt",),
    ("Listener.pipeline",),
    ("Listener.event_listener", "Listener.safe_config_parser"),
    ("Listener",),
    ("Listener.cli", "Listener.testing"),
    ("Listener.__main__",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> Dict[str, Set[str]]:
    """Each module of the package, with the modules of the package it imports."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module or "") if node.level else (node.module or "")
                # ``from . import x`` and ``from .pkg import module`` name modules; anything else a module's attribute.
                targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules] or [base]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def unit_of(module: str) -> Tuple[int, str]:
    """The layer index and the unit (longest listed prefix) a module belongs to."""
    best: Tuple[int, str] = (-1, "")
    for index, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and len(unit) > len(best[1]):
                best = (index, unit)
    return best


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.unit
def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [module for module in import_graph() if unit_of(module)[0] < 0]
    assert not unplaced, f"add these modules to a layer in LAYERS: {unplaced}"


@pytest.mark.unit
def test_the_package_has_no_import_circle() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.unit
def test_imports_run_down_the_layers_only() -> None:
    wrong = []
    for module, imported in sorted(import_graph().items()):
        layer, unit = unit_of(module)
        for target in sorted(imported):
            target_layer, target_unit = unit_of(target)
            if target_unit != unit and target_layer >= layer:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports that run up or across a layer:\n" + "\n".join(wrong)


@pytest.mark.unit
def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    graph = {"Listener.core.a": {"Listener.mqtt.b"}, "Listener.mqtt.b": {"Listener.core.a"}}
    assert cycles(graph) == [["Listener.core.a", "Listener.mqtt.b"]]
    assert unit_of("Listener.core.a")[0] < unit_of("Listener.mqtt.b")[0]
    assert unit_of("Listener.mqtt.b") == (LAYERS.index(("Listener.mqtt",)), "Listener.mqtt")


@pytest.mark.unit
def test_the_graph_follows_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "Listener.config.settings" in graph["Listener.event_listener"]  # ``from .config.settings import …``
    assert "Listener.jobs.sqlite" in graph["Listener.jobs.factory"]  # imported inside a function
    assert "Listener.event_listener" in graph["Listener"]


def _method(path: Path, cls: str, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found in {path}")


@pytest.mark.unit
def test_the_facade_wires_its_parts_at_construction_only() -> None:
    """EventListener.__init__ passes each part its collaborators: no lambda stands in for an object, and no
    attribute of a part is set after the part was built."""
    init = _method(PACKAGE / "event_listener.py", "EventListener", "__init__")
    lambdas = [node.lineno for node in ast.walk(init) if isinstance(node, ast.Lambda)]
    assert lambdas == [], f"lambdas in EventListener.__init__ at lines {lambdas}"
    patched = [node.lineno for node in ast.walk(init) if isinstance(node, (ast.Assign, ast.AnnAssign))
               for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
               if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)]
    assert patched == [], f"attributes of parts set after construction at lines {patched}"


@pytest.mark.unit
def test_the_test_harness_uses_the_public_observer_hook_not_a_subclass() -> None:
    tree = ast.parse((PACKAGE / "testing" / "__init__.py").read_text(encoding="utf-8"))
    subclasses = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                  for base in node.bases if isinstance(base, ast.Name) and base.id == "EventListener"]
    assert subclasses == []
    assert "observer=" in (PACKAGE / "testing" / "__init__.py").read_text(encoding="utf-8")
