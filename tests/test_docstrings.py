"""Every public module, top-level class, top-level function and public method has a docstring.

Read from the source with ``ast`` so that nothing is imported. Public means the name does not start
with ``_``; a package (``__init__.py``) counts as a module named after its folder. Dunder methods
(``__init__``, ``__call__``, ...) are left out: the class docstring documents the constructor.
``forward`` is not left out, since it is where a module's input and output shapes are written.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_torchrec"

_Def = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _is_overload(node: ast.AST) -> bool:
    # @typing.overload stubs share the implementation's docstring.
    decorators = getattr(node, "decorator_list", [])
    return any(
        (isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in decorators
    )


def missing_docstrings(source: str, module: str, where: str) -> Iterator[str]:
    """``"where:line kind name"`` for each public definition in ``source`` that has no docstring."""
    tree = ast.parse(source)
    if _public(module.rsplit(".", 1)[-1]) and ast.get_docstring(tree) is None:
        yield f"{where}:1 module {module}"
    for node in tree.body:
        if not isinstance(node, _Def) or not _public(node.name) or _is_overload(node):
            continue
        if ast.get_docstring(node) is None:
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            yield f"{where}:{node.lineno} {kind} {node.name}"
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not _public(item.name) or _is_overload(item):
                continue
            if ast.get_docstring(item) is None:
                yield f"{where}:{item.lineno} method {node.name}.{item.name}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_missing() -> List[str]:
    found: List[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE.parent))
        found.extend(missing_docstrings(path.read_text(encoding="utf-8"), _module_name(path), where))
    return found


def test_every_public_definition_has_a_docstring() -> None:
    missing = _all_missing()
    assert not missing, f"{len(missing)} public definitions have no docstring:\n" + "\n".join(missing)


def test_the_checker_sees_what_is_missing() -> None:
    source = '''
def documented():
    """Yes."""

def bare():
    pass

def _private():
    pass

class Bare:
    def method(self):
        pass

    def __init__(self):
        pass

    def _helper(self):
        pass

    def forward(self, x):
        """Shapes."""

class _Hidden:
    def method(self):
        pass
'''
    assert list(missing_docstrings(source, "pkg.mod", "pkg/mod.py")) == [
        "pkg/mod.py:1 module pkg.mod",
        "pkg/mod.py:5 function bare",
        "pkg/mod.py:11 class Bare",
        "pkg/mod.py:12 method Bare.method",
    ]
    assert list(missing_docstrings('"""Doc."""\n', "pkg._private", "pkg/_private.py")) == []


def test_script_help_descriptions_are_whole_sentences() -> None:
    """Every benchmark and example script with a command line describes itself (``--help``) by the first
    paragraph of its docstring (:func:`doc_summary`), a whole sentence: its first line alone used to stop
    mid-sentence ("... training and")."""
    from mtl_torchrec.launch.args import doc_summary

    root = PACKAGE.parent
    scripts = sorted([*root.glob("benchmarks/*.py"), *root.glob("examples/**/*.py")])
    checked = []
    for path in scripts:
        source = path.read_text(encoding="utf-8")
        if "ArgumentParser(" not in source:
            continue
        where = path.relative_to(root)
        assert "ArgumentParser(description=doc_summary(__doc__))" in source, f"{where}: describe it by doc_summary"
        summary = doc_summary(ast.get_docstring(ast.parse(source), clean=False) or "")
        assert summary.endswith(".") and "\n" not in summary, f"{where}: {summary!r}"
        checked.append(where)
    assert len(checked) >= 17, checked
