"""The package's layering: imports go downward only, no cycles, no private names across packages.

Read from the source with ``ast`` (every import statement, also inside functions; imports under
``if TYPE_CHECKING:`` are annotations only and never run).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_torchrec"

# Lowest first; a package may import from lower ranks (and itself) only. train and eval share a
# rank: both use distributed/, never each other.
LAYERS: Dict[str, int] = {
    "core": 0,
    "data": 1,
    "text": 2,
    "modules": 3,
    "model": 4,
    "config": 5,
    "distributed": 6,
    "train": 7,
    "eval": 7,
    "serve": 8,
    "workflows": 9,
    "launch": 10,
    "components": 11,
    "__main__": 11,
    "__init__": 11,
}
# Only the command line imports inside functions, so that `mtl-torchrec --help` starts without torch.
LAZY_IMPORTS_ALLOWED = {"launch"}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> Iterator[Tuple[ast.AST, bool]]:
    """(import node, at module level) for every import that runs."""

    def walk(node: ast.AST, top: bool) -> Iterator[Tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, nested)

    yield from walk(tree, True)


def _targets(node: ast.AST, module: str, is_pkg: bool) -> List[Tuple[str, List[str]]]:
    """(absolute module, imported names) for the package's own imports."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == "mtl_torchrec"]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        base = base if is_pkg else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "mtl_torchrec":
        return []
    return [(target, [a.name for a in node.names])]


def _graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    edges: Dict[str, Set[str]] = {}
    problems: List[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, top in _imports(tree):
            for target, names in _targets(node, module, path.name == "__init__.py"):
                parts = target.split(".")
                other = parts[1] if len(parts) > 1 else "__init__"
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                if other == unit:
                    continue
                edges.setdefault(unit, set()).add(other)
                if not top and unit not in LAZY_IMPORTS_ALLOWED:
                    problems.append(f"{where}: function-level import of {target}")
                if LAYERS.get(other, 99) >= LAYERS.get(unit, -1):
                    problems.append(f"{where}: {unit} (layer {LAYERS.get(unit)}) imports {target} (layer {LAYERS.get(other)})")
                private = [n for n in names if n.startswith("_")]
                if private:
                    problems.append(f"{where}: imports private {private} from {target}")
    return edges, problems


def test_every_package_has_a_layer() -> None:
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_go_downward_only() -> None:
    _, problems = _graph()
    assert not problems, "\n".join(problems)


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a path ``[a, b, ..., a]``, or ``[]`` when the graph has none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(u: str) -> List[str]:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return []

    for u in sorted(edges):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return []


def test_no_import_cycle_between_packages() -> None:
    edges, _ = _graph()
    assert find_cycle(edges) == []


def test_the_checker_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
