"""The package's layers: imports run one way, down this list, and no package or module imports in a cycle.

A module may import modules of its own package and of packages below it; `core` imports nothing of the
product's. An import inside a function counts like any other (it may not dodge a cycle); one under
`if TYPE_CHECKING:` is for annotations only and is held to the direction but not to the cycle rule.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "orchestrator"
# bottom to top: each layer may import the ones before it; layers on one line are siblings that import neither other
LAYERS = [
    ("core",),
    ("techniques", "models"),
    ("io",),
    ("runtimes",),
    ("config",),
    ("tasks",),
    ("training", "tracking"),
    ("engine",),
    ("api",),
    ("cli",),
    ("__main__", "__init__"),  # the front doors: `python -m orchestrator`, the package's lazy re-exports
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(imported orchestrator module, inside a function, typing only) for each import statement of the file."""
    tree, found = ast.parse(path.read_text()), []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            typing = typing_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import):
                found.extend((a.name, function, typing) for a in child.names if a.name.split(".")[0] == "orchestrator")
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "orchestrator":
                found.extend((f"{child.module}.{a.name}", function, typing) for a in child.names)
            visit(child, function, typing)

    visit(tree, False, False)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module an import names (`from orchestrator.io import storage` names the module orchestrator.io.storage;
    `from orchestrator.io.storage import Storage` the module orchestrator.io.storage)."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


MODULES = _modules()
EDGES = [(source, _resolve(target, MODULES), function, typing)
         for source, path in MODULES.items() for target, function, typing in _imports(path)]


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in MODULES} <= set(RANK), sorted({_layer(m) for m in MODULES} - set(RANK))


@pytest.mark.parametrize("layer", [name for layer in LAYERS for name in layer])
def test_each_layer_imports_only_its_own_package_and_the_layers_below(layer):
    wrong = [f"{s} imports {t}" for s, t, _, _ in EDGES if _layer(s) == layer and _layer(t) != layer
             and RANK[_layer(t)] >= RANK[layer]]
    assert wrong == []


def test_the_core_imports_nothing_of_the_product():
    assert [(s, t) for s, t, _, _ in EDGES if _layer(s) == "core" and _layer(t) != "core"] == []


def test_no_import_of_the_product_hides_inside_a_function():
    assert [f"{s} imports {t} in a function" for s, t, function, _ in EDGES if function] == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of `graph` as a list of nodes, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return []


def test_no_two_packages_import_each_other():
    graph = defaultdict(set)
    for s, t, _, typing in EDGES:
        if not typing and _layer(s) != _layer(t):
            graph[_layer(s)].add(_layer(t))
    assert _cycle(graph) == []


def test_no_modules_import_each_other():
    graph = defaultdict(set)
    for s, t, _, typing in EDGES:
        if not typing and s != t:
            graph[s].add(t)
    assert _cycle(graph) == []
