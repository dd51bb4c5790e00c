"""The public API in ``codeplan_tools/__init__.py``: every name resolves, importing it is cheap, and
the library example in its docstring (and the README) works as written."""

import subprocess
import sys

import pytest

import codeplan_tools


@pytest.mark.parametrize("name", sorted(set(codeplan_tools.__all__) - {"__version__"}))
def test_every_public_name_resolves(name):
    assert getattr(codeplan_tools, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        codeplan_tools.nope  # noqa: B018


def test_importing_the_package_loads_no_torch_and_no_cli():
    code = "import sys, codeplan_tools; print('torch' in sys.modules, 'click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_library_example_runs():
    from codeplan_tools import FilterConfig, StageContext, filter_records

    records = [
        {
            "prompt": "What is 2 + 3?",
            "response": "2 + 3 = 5. The answer is 5.",
            "plan": "a = 2\nb = 3\nprint(a + b)",
        },
        {
            "prompt": "What is 4 + 4?",
            "response": "4 + 4 = 8. The answer is 8.",
        },  # no plan: nonempty rejects it
    ]
    ctx = StageContext("filter")
    kept = list(filter_records(records, FilterConfig(), ctx))
    assert [r["prompt"] for r in kept] == ["What is 2 + 3?"]
    assert ctx.stats.counters["kept"] == 1 and ctx.stats.counters["rejected.nonempty"] == 1
    assert ctx.rejected[0]["meta"]["filter"]["reason"].startswith("nonempty")
