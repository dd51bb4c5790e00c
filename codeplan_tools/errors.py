"""Named exceptions of the library.

The command layer (``codeplan_cli.main``) turns each into one line on stderr and the
exception's ``exit_code``; nothing else in the code prints errors or calls ``sys.exit``.
Unexpected exceptions keep their traceback under pytest or with ``CODEPLAN_RAISE_ERRORS=1``.
"""

from __future__ import annotations

EX_USAGE = 2  # click's own code for a bad flag
EX_DATAERR = 65  # sysexits.h: the input data was incorrect
EX_UNAVAILABLE = 69  # a service (engine, server) could not be used
EX_SOFTWARE = 70
EX_CONFIG = 78  # settings conflict with existing state (resume key, fingerprint)


class CodeplanError(Exception):
    """Base of every error meant to be shown to the user as one line."""

    exit_code = 1


class UsageError(CodeplanError):
    """A flag or combination of flags that cannot work."""

    exit_code = EX_USAGE


class BadRecord(CodeplanError):
    """A malformed input line or a record missing a required field."""

    exit_code = EX_DATAERR

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


class SettingsMismatch(CodeplanError):
    """Existing output (resume) or packs (fingerprint) were made with other settings."""

    exit_code = EX_CONFIG


class MissingDependency(CodeplanError):
    """An optional dependency is not installed; the message names the extra to install."""

    exit_code = EX_UNAVAILABLE


class EngineError(CodeplanError):
    """An engine or server failed in a way that retries did not fix."""

    exit_code = EX_UNAVAILABLE


def require(module: str, extra: str):
    """Import ``module`` or raise MissingDependency naming ``pip install 'codeplan[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"{module} is not installed ({exc}); install it with: pip install 'codeplan[{extra}]'"
        ) from exc
