"""The tree's shape: module and function sizes, and imports that run one way only.

The layers, from the bottom (a module may import from its own layer and the ones below it):

    0  backends, masks, data, _checks, _cpu, compute_types
    1  functional
    2  layers
    3  capture, integrations, align, grounding
    4  models
    5  training, viz
    6  commands, cli

Lazy imports (inside functions) and `TYPE_CHECKING` imports count too. The one exception is the
`from_*` entry points of `layers/` (`CrossAttention.from_torch`, `from_diffusers`,
`from_transformers`, `TwoWayTransformer.from_segment_anything`), which import lazily from
`integrations/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "crossattn"

LAYERS = {
    "backends": 0,
    "masks": 0,
    "data": 0,
    "_checks": 0,
    "_cpu": 0,
    "compute_types": 0,
    "functional": 1,
    "layers": 2,
    "capture": 3,
    "integrations": 3,
    "align": 3,
    "grounding": 3,
    "models": 4,
    "training": 5,
    "viz": 5,
    "commands": 6,
    "cli": 6,
    "__main__": 6,
}

ENTRY_POINTS = {"from_torch", "from_diffusers", "from_transformers", "from_segment_anything"}
MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 90
WAIVER = "long on purpose:"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
        return [base] if base.startswith("crossattn") else []
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    base = ".".join(package + ([node.module] if node.module else []))
    if node.module:
        return [base]
    return [f"{base}.{alias.name}" for alias in node.names]


def _imports(path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported dotted name, line, names of the enclosing functions) for every crossattn import."""
    module = _dotted(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int, list[str]]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.ImportFrom):
                for name in _resolve(module, path.name == "__init__.py", child):
                    out.append((name, child.lineno, scope))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("crossattn"):
                        out.append((alias.name, child.lineno, scope))
            visit(child, scope)

    visit(tree, [])
    return out


_NAMES = {_dotted(p) for p in _modules()}


def _top(dotted: str) -> str | None:
    """The top package or module below `crossattn` that `dotted` lies in (None: the root)."""
    while dotted not in _NAMES and "." in dotted:
        dotted = dotted.rsplit(".", 1)[0]  # a name imported from a module, not a module
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer():
    for path in _modules():
        top = _top(_dotted(path))
        if top is not None:
            assert top in LAYERS, f"{path}: give {top!r} a layer in LAYERS"


def test_imports_run_downward():
    bad = []
    for path in _modules():
        here = _top(_dotted(path))
        if here is None:
            continue  # the package's lazy __init__ re-exports the public names
        for name, line, scope in _imports(path):
            there = _top(name)
            if there is None or there == here:
                continue
            if LAYERS[there] <= LAYERS[here]:
                continue
            if here == "layers" and there == "integrations" and ENTRY_POINTS & set(scope):
                continue
            bad.append(f"{path.relative_to(SRC)}:{line} imports {name} (layer {LAYERS[there]})")
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    names = _NAMES
    for path in _modules():
        here = _dotted(path)
        edges = graph.setdefault(here, set())
        for name, _, scope in _imports(path):
            if ENTRY_POINTS & set(scope):
                continue
            while name not in names and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in names and name != here and name != "crossattn":
                edges.add(name)
    # Tarjan-free check: a depth-first search that reports the first back edge.
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _function_sizes(path: Path):
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        size = node.end_lineno - node.lineno + 1
        body = node.body
        first = body[0]
        if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
            if isinstance(first.value.value, str):
                size -= first.end_lineno - first.lineno + 1
        head = "\n".join(lines[node.lineno - 1 : first.lineno + 3])
        yield node.name, node.lineno, size, WAIVER in head


def test_modules_and_functions_are_small():
    bad = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_MODULE_LINES and WAIVER not in "\n".join(lines[:15]):
            bad.append(f"{path.relative_to(SRC)}: {len(lines)} lines")
        for name, line, size, waived in _function_sizes(path):
            if size > MAX_FUNCTION_LINES and not waived:
                bad.append(f"{path.relative_to(SRC)}:{line} {name}(): {size} lines")
    assert not bad, "over the size limits:\n" + "\n".join(bad)
