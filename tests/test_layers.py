"""The library's dependency rule, read from the source with ``ast`` (nothing is imported):

- no module of ``codeplan_tools`` imports click, typer or the CLI package (``codeplan_cli``), at the
  top or inside a function: the library is usable without the command line;
- ``codeplan_tools/core/`` imports nothing from ``codeplan_tools`` outside ``core``: the plumbing
  sits below formats, engines, stages, eval, trainer and tools.

Both ``import x`` / ``from x import y`` (relative ones resolved) and ``importlib.import_module("x")``
/ ``__import__("x")`` with a literal name count. A failure names each offending ``file:line``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "codeplan_tools"
CLI_PACKAGES = ("click", "typer", "codeplan_cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from ..stages import x` inside codeplan_tools.core
                prefix = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                if node.module:
                    yield node.lineno, f"{prefix}.{node.module}"
                else:
                    for alias in node.names:
                        yield node.lineno, f"{prefix}.{alias.name}"
            elif node.module == "codeplan_tools":  # `from codeplan_tools import stages`
                for alias in node.names:
                    yield node.lineno, f"codeplan_tools.{alias.name}"
            elif node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def library_files(under: Path = LIBRARY) -> list[Path]:
    return sorted(under.rglob("*.py"))


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(files: list[Path], forbidden) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line}: imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if forbidden(module)
    ]


def test_library_files_found():
    assert len(library_files()) > 20
    assert library_files(LIBRARY / "core")


def test_library_does_not_import_the_command_line():
    found = violations(library_files(), lambda m: any(is_within(m, p) for p in CLI_PACKAGES))
    assert not found, "the library must not import click, typer or codeplan_cli:\n" + "\n".join(found)


def test_core_imports_nothing_above_it():
    found = violations(
        library_files(LIBRARY / "core"),
        lambda m: is_within(m, "codeplan_tools") and not is_within(m, "codeplan_tools.core"),
    )
    assert not found, "codeplan_tools/core must import only from core:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("import click\n", "codeplan_tools/x.py", ["click"]),
        ("def f():\n    from typer import Option\n", "codeplan_tools/x.py", ["typer"]),
        ("from codeplan_tools import stages\n", "codeplan_tools/core/x.py", ["codeplan_tools.stages"]),
        ("from ..stages.filter import f\n", "codeplan_tools/core/x.py", ["codeplan_tools.stages.filter"]),
        ("from . import records\n", "codeplan_tools/core/x.py", ["codeplan_tools.core.records"]),
        ("from .records import dumps\n", "codeplan_tools/core/__init__.py", ["codeplan_tools.core.records"]),
        ("importlib.import_module('codeplan_cli.main')\n", "codeplan_tools/x.py", ["codeplan_cli.main"]),
    ],
    ids=["import", "in-a-function", "from-package", "relative-up", "relative-here", "init", "dynamic"],
)
def test_imports_are_read_as_absolute_modules(tmp_path, monkeypatch, source, where, expected):
    """The checker itself: relative and in-function imports resolve to the module they name."""
    monkeypatch.setattr("tests.test_layers.REPO", tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert [module for _, module in imported_modules(path)] == expected
