"""The package's layering: imports go downward only, no cycles, no private names across packages;
and its rooms: no import cycle between the modules of a package, no module over :data:`MAX_LINES`
lines, no ``print`` outside the command line.

Read from the source with ``ast`` (every import statement, also inside functions; imports under
``if TYPE_CHECKING:`` are annotations only and never run, so the layering ignores them, while the
module-cycle check counts them: a circle of annotations is still a circle).
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


# ----------------------------------------------------------------------------- modules: cycles, size, print

# A module longer than this is split by job (a package of modules, or sibling modules).
MAX_LINES = 500


def _module_level_imports(tree: ast.Module) -> Iterator[ast.AST]:
    """Every import that runs when the module is imported, and those under ``if TYPE_CHECKING:``
    (an annotation-only import of a module that imports this one is a circle all the same)."""

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child)

    yield from walk(tree)


def _module_graph() -> Dict[str, Set[str]]:
    """Module -> the modules of the same package it imports at module level (``from pkg import sub``
    counts as importing ``pkg.sub`` when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _module_level_imports(tree):
            for target, names in _targets(node, module, path.name == "__init__.py"):
                found = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                for other in found or [target]:
                    same_package = other.split(".")[:2] == module.split(".")[:2]
                    if other != module and other in modules and same_package:
                        edges.setdefault(module, set()).add(other)
    return edges


def test_no_import_cycle_between_modules_of_a_package() -> None:
    edges = _module_graph()
    assert find_cycle(edges) == [], " -> ".join(find_cycle(edges))


def test_the_module_graph_sees_the_package_own_imports() -> None:
    edges = _module_graph()
    assert "mtl_torchrec.train.view" in edges["mtl_torchrec.train.callbacks"]
    assert "mtl_torchrec.train.callbacks" in edges["mtl_torchrec.train.trainer"]
    assert "mtl_torchrec.core.config.fields" in edges["mtl_torchrec.core.config.validate"]


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
             for p in sorted(PACKAGE.rglob("*.py"))}
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"


def print_calls(source: str) -> List[int]:
    """Line numbers of the calls of the builtin ``print`` in ``source``."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


def test_library_code_logs_instead_of_printing() -> None:
    """Only the command line (launch/) prints; everything else uses a module logger
    (``logging.getLogger(__name__)``), which the command line shows on the console."""
    found = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
             if _unit(p) not in LAZY_IMPORTS_ALLOWED for line in print_calls(p.read_text(encoding="utf-8"))]
    assert not found, "print() in library code (use a module logger): " + ", ".join(found)


def test_the_print_checker_sees_calls_only() -> None:
    assert print_calls("print('x')\nfingerprint(1)\nlogger.info('print(')\nf = print\n") == [1]
