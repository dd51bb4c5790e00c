"""The tests that tests/conftest.py marks by name still exist: a renamed test would silently rejoin
``make test-fast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO, SLOW_TESTS, VLLM_TESTS


@pytest.mark.parametrize("test_id", sorted({*SLOW_TESTS, *VLLM_TESTS}))
def test_a_test_marked_by_name_exists(test_id):
    file, _, name = test_id.partition("::")
    tree = ast.parse(Path(REPO, file).read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in functions, f"tests/conftest.py marks {test_id}, which no longer exists"
