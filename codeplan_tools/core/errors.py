"""Named exceptions of the library.

The command layer (``codeplan_cli.main``) turns each into one line on stderr and the
exception's ``exit_code``; nothing else in the code prints errors or calls ``sys.exit``.
Unexpected exceptions keep their traceback under pytest or with ``CODEPLAN_RAISE_ERRORS=1``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

# Exit statuses (sysexits.h where one fits). README's exit-status table lists the same codes.
EX_USAGE = 2  # click's own code for a bad flag
EX_DATAERR = 65  # the input data was incorrect
EX_NOINPUT = 66  # an input file (or model folder) does not exist or cannot be read
EX_UNAVAILABLE = 69  # a service (engine, server, hub) or optional dependency could not be used
EX_SOFTWARE = 70  # a bug: CODEPLAN_RAISE_ERRORS=1 shows the traceback
EX_CANTCREAT = 73  # an output file cannot be created (missing/unwritable folder, read-only)
EX_IOERR = 74  # an I/O error while reading or writing (disk full, device error)
EX_TEMPFAIL = 75  # another run holds the output (try again when it has finished)
EX_NOPERM = 77  # refused for safety (a model that needs remote code without --trust-remote-code)
EX_CONFIG = 78  # settings conflict with existing state (resume key, fingerprint, a file we did not write)
EX_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EX_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class CodeplanError(Exception):
    """Base of every error meant to be shown to the user as one line. A subclass names the exit
    status it ends the run with: ``class UsageError(CodeplanError, exit_code=EX_USAGE)``."""

    exit_code: int = 1

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class UsageError(CodeplanError, exit_code=EX_USAGE):
    """A flag or combination of flags that cannot work."""


class BadRecord(CodeplanError, exit_code=EX_DATAERR):
    """A malformed input line or a record missing a required field."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


class SettingsMismatch(CodeplanError, exit_code=EX_CONFIG):
    """Existing output (resume) or packs (fingerprint) were made with other settings."""


class MissingDependency(CodeplanError, exit_code=EX_UNAVAILABLE):
    """An optional dependency is not installed; the message names the extra to install."""


class InputMissing(CodeplanError, exit_code=EX_NOINPUT):
    """An input file, folder or model path does not exist or cannot be read."""


class CannotCreate(CodeplanError, exit_code=EX_CANTCREAT):
    """An output path cannot be created or written (checked before the run starts)."""


class OutputIOError(CodeplanError, exit_code=EX_IOERR):
    """Reading or writing failed part-way (disk full, I/O error)."""


class OutputBusy(CodeplanError, exit_code=EX_TEMPFAIL):
    """Another process holds the lock on this output (``FILE is being written by pid N``)."""


class NotPermitted(CodeplanError, exit_code=EX_NOPERM):
    """Refused for safety: e.g. a model that needs remote code without ``--trust-remote-code``."""


class EngineError(CodeplanError, exit_code=EX_UNAVAILABLE):
    """An engine or server failed in a way that retries did not fix."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise MissingDependency naming ``pip install 'codeplan[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"{module} is not installed ({exc}); install it with: pip install 'codeplan[{extra}]'"
        ) from exc
