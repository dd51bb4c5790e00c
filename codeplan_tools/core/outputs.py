"""Output safety: nothing a run writes may eat its inputs, and one writer per output.

Checked when a stage opens its outputs (``StageContext``), before anything is read or written:

- Every ``-i`` file exists and is a readable file (``InputMissing``, exit 66, naming the file).
- ``-o``, ``--rejects`` and ``--stats`` are not the same file as an input, nor as each other
  (``UsageError``, exit 2). Files are compared by device and inode, so a symlink or a hard link to
  an input counts as the input; stdin and stdout count too when they are redirected from/to a regular
  file (``codeplan filter -i a.jsonl >> a.jsonl`` is refused; with ``> a.jsonl`` the shell has already
  emptied the file before we start, and the refusal says so).
- Each output path can be written: an existing file is writable, or its nearest existing folder is a
  writable folder (``CannotCreate``, exit 73). Folders are created later, by the writer.
- ``OutputLock`` holds each output file for the run's lifetime: a second run on the same output stops
  with ``OutputBusy`` (exit 75, ``FILE is being written by pid N``). The lock is ``fcntl.flock`` on a
  hidden file beside the output, ``.NAME.codeplan-lock`` (for a folder such as finetune's ``--out``
  ``ckpt/``: ``.ckpt.codeplan-lock`` beside the folder, so the lock does not depend on the folder
  existing and does not appear inside it). It holds the holder's pid, is removed when the run ends,
  and the kernel releases it when the process dies (a file left by ``kill -9`` is harmless: the next
  run takes it over). Shell globs such as ``cat out.*.zst`` skip it (it starts with a dot). Symlinked
  spellings of one output share a lock (the real path names it). stdout, devices and FIFOs
  (``-o /dev/null``) are not locked.
- ``OutputWriter``: a failed write part-way (disk full, I/O error) is ``OutputIOError`` (exit 74)
  naming the file, and a resumed file keeps the encoding it already has (zstd, gzip or plain, from
  its first bytes), whatever ``--plain``/``--zstd`` or the name ask for: two encodings appended to
  each other make a file that no tool reads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from pathlib import Path
from typing import IO, Any

from codeplan_tools.core.errors import CannotCreate, InputMissing, OutputBusy, OutputIOError, UsageError
from codeplan_tools.core.streams import GZIP_MAGIC, ZSTD_MAGIC, RecordWriter

LOCK_SUFFIX = ".codeplan-lock"
# flock is not offered everywhere (some FUSE and old NFS mounts); there the run goes on unlocked.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


# -- inputs ---------------------------------------------------------------------------------------
def check_inputs(paths: list[str], flag: str = "-i") -> None:
    """Every input file exists and can be read (``InputMissing``, exit 66); checked for all of them
    before a run starts. ``flag`` names them in the message (``-i``, or ``RUN`` for score --compare)."""
    for path in paths:
        if path == "-":
            continue
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise InputMissing(f"{flag} {path}: no such file") from None
        except OSError as exc:
            raise InputMissing(f"{flag} {path}: cannot be read ({exc.strerror})") from None
        if stat.S_ISDIR(mode):
            # A datasets folder or a folder of Parquet/Arrow shards is read as one input; any other
            # folder is refused here, naming what to give.
            from codeplan_tools.core.columnar import folder_files

            try:
                folder_files(path)
            except InputMissing as exc:
                raise InputMissing(f"{flag} {exc}") from None
            continue
        if not os.access(path, os.R_OK):
            raise InputMissing(f"{flag} {path}: cannot be read (permission denied)")


# -- same-file checks -----------------------------------------------------------------------------
def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing file (links followed), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stream_file_id(stream: IO[Any]) -> tuple[int, int] | None:
    """(device, inode) of stdin/stdout when it is a regular file (not a pipe, terminal or /dev/null)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # a test's captured stream has no descriptor
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def check_distinct(
    inputs: list[str],
    outputs: list[tuple[str, str]],
    stdin: IO[Any] | None = None,
    stdout: IO[Any] | None = None,
) -> None:
    """Refuse (exit 2) an output that is an input or another output.

    ``outputs`` holds ``(flag, path)`` for each output the run writes, ``-`` for stdout.
    ``stdin``/``stdout`` default to the process's own streams (compared when they are regular files).
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    sources: dict[tuple[int, int], str] = {}
    for path in inputs:
        file_id = _stream_file_id(stdin) if path == "-" else _file_id(path)
        if file_id is not None:
            sources.setdefault(file_id, "stdin" if path == "-" else f"input {path}")
    seen: dict[tuple[int, int] | str, str] = {}
    for flag, path in outputs:
        if path == "-":
            name = "stdout" if flag == "-o" else f"{flag} - (stdout)"
            file_id = _stream_file_id(stdout)
        else:
            name, file_id = f"{flag} {path}", _file_id(path)
        if file_id in sources:
            emptied = " (with '> FILE' the shell emptied it before codeplan started)" if path == "-" else ""
            raise UsageError(
                f"{name} is the same file as {sources[file_id]}: writing it would destroy the input{emptied}; "
                "write to another file"
            )
        # Outputs not yet created are told apart by their real path.
        identity = file_id or ("stdout" if path == "-" else os.path.realpath(path))
        if identity in seen:
            raise UsageError(f"{name} is the same output as {seen[identity]}: give each its own file")
        seen[identity] = name


# -- writability ----------------------------------------------------------------------------------
def check_writable(path: str | os.PathLike | None, flag: str) -> None:
    """Refuse (``CannotCreate``, exit 73) an output path that cannot be written, before a run starts.

    ``path`` is a file to be written (or replaced) by the option ``flag`` (``-o``, ``--stats``,
    ``--report``...); None or ``-`` (stdout) passes. An existing file must be writable and not a
    folder; a new file needs its nearest existing parent to be a writable folder (missing folders
    below it are created by the writer).
    """
    if path is None or str(path) == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise CannotCreate(f"{flag} {path}: is a folder; give a file name")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise CannotCreate(f"{flag} {path}: the file is not writable (read-only file or file system)")
        return
    folder = target.absolute().parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise CannotCreate(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CannotCreate(
            f"{flag} {path}: cannot create it, {folder} is not writable (permissions or a read-only file system)"
        )


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse (``CannotCreate``, exit 73) a folder to be written into (``--tensorboard DIR``) that
    cannot be: an existing one must be a writable folder, a new one is checked as ``check_writable``."""
    target = Path(path)
    if not target.is_dir():
        if target.exists():
            raise CannotCreate(f"{flag} {path}: is a file; give a folder")
        check_writable(path, flag)
    elif not os.access(target, os.W_OK | os.X_OK):
        raise CannotCreate(
            f"{flag} {path}: the folder is not writable (permissions or a read-only file system)"
        )


def check_paths(inputs: list[str], outputs: list[tuple[str, str]]) -> None:
    """Every check a run makes before it starts: inputs readable (66), outputs distinct from the inputs
    and from each other (2), outputs writable (73). ``outputs``: ``(flag, path)``, ``-`` for stdout."""
    check_inputs(inputs)
    check_distinct(inputs, outputs)
    for flag, path in outputs:
        check_writable(path, flag)


# -- one writer per output ------------------------------------------------------------------------
def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output file or folder: ``.NAME.codeplan-lock`` beside it."""
    real = Path(os.path.realpath(path))
    if not real.name:  # the root folder
        return real / LOCK_SUFFIX
    return real.parent / f".{real.name}{LOCK_SUFFIX}"


class OutputLock:
    """Exclusive lock on an output (file or folder) for as long as it is held.

    ``with OutputLock(path): ...`` or ``acquire()`` / ``release()``. A second holder, in this process
    or another, gets ``OutputBusy``: ``PATH is being written by pid N``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.lock_file = lock_path(path)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if os.path.exists(self.path) and not (os.path.isfile(self.path) or os.path.isdir(self.path)):
            return self  # a device or a FIFO (-o /dev/null): nothing to protect, no lock file in /dev
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CannotCreate(f"{self.path}: cannot create its folder ({exc.strerror})") from None
        while True:
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise CannotCreate(f"{self.path}: cannot create {self.lock_file} ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputBusy(
                    f"{self.path} is being written by pid {holder}; wait for that run to finish "
                    "(or write to another file)"
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_LOCKING:
                    return self
                raise
            # The holder before us may have removed the file between our open and our lock: then
            # we locked a file nobody else will see, so start again on the one at the path now.
            try:
                current = os.stat(self.lock_file)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Removed while still locked, so a run waiting on this file retries on a fresh one.
            os.unlink(self.lock_file)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- writing --------------------------------------------------------------------------------------
def existing_encoding(path: str | None) -> str | None:
    """``"zstd"``, ``"gzip"`` or ``"plain"`` for a non-empty existing file (from its first bytes), else None."""
    if path in (None, "-") or not os.path.isfile(path):  # a device or a FIFO is not read back
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if not head:
        return None
    if head == ZSTD_MAGIC:
        return "zstd"
    return "gzip" if head[:2] == GZIP_MAGIC else "plain"


class OutputWriter(RecordWriter):
    """``RecordWriter`` for a stage's outputs: write failures are one line, the encoding can be fixed.

    ``plain`` forces a kind as in ``streams.output_kind`` (True, or "plain"/"gzip"/"zstd");
    ``compressed`` (True: zstd, False: plain) overrides it, ``CODEPLAN_PLAIN`` and the file name. With
    ``append``, the encoding of the existing file overrides all of them (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        plain: bool | str = False,
        append: bool = False,
        compressed: bool | None = None,
        background: bool = False,
    ) -> None:
        kind = plain if compressed is None else ("zstd" if compressed else "plain")
        if append:
            kind = existing_encoding(None if path is None else str(path)) or kind
        try:
            super().__init__(path, plain=kind, append=append, background=background)
        except OSError as exc:  # the pre-check passed but the open failed (a race, a quota)
            raise CannotCreate(f"{path}: cannot be opened for writing ({exc.strerror})") from None

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:  # a closed pipe is PipeClosed already; this is disk full, EIO...
            raise self._failed(exc) from None

    def _hand_over(self) -> None:  # (a flush from write(): the same failures)
        try:
            super()._hand_over()
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # closing the file retries the write that failed
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputIOError:
        return OutputIOError(
            f"{self.path or '<stdout>'}: writing failed part-way ({exc.strerror or exc}); "
            "the records before it are complete"
        )
