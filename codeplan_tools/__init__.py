"""codeplan_tools: the library behind the ``codeplan`` command (CodePlan, ICLR 2025)."""

__version__ = "0.1.0"
