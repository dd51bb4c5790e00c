"""The task registry: benchmarks (and synthetic tasks) with their scorer, files and prompt format.

A ``Task`` names a scorer family (``codeplan_tools.eval.scorers``), the files it reads under the data folder,
the answer-format instruction appended to prompts, an adapter from the public file format to records,
and how to split results into subtasks (MATH subject/level, MuSiQue hop count, a synthetic task's
difficulty). Built-in benchmarks live in ``codeplan_tools.eval.tasks.benchmarks``; every module registers
its tasks the same way, by calling ``register_task`` when imported.

Registering a task from another module (e.g. ``codeplan_tools.eval.tasks.synth``)::

    from codeplan_tools.eval.tasks import Task, field_subtasks, register_task

    register_task(Task(
        name="synth/last_letter",            # records carry task="synth/last_letter"
        scorer="exact",                      # an existing family: numeric, math, choice, exact, yesno, qa, ifeval
        scorer_options={"normalize": "compact"},
        instruction='Finish with "The answer is X."',
        subtasks=field_subtasks("difficulty"),   # report accuracy per value of record["difficulty"]
        difficulty="difficulty",             # ... and plot it as the difficulty axis
        description="Last Letter concatenation of k words",
    ))

``get_task`` / ``list_tasks`` / ``resolve_task`` import ``benchmarks`` and ``synth`` (when present) first,
so callers never import them by hand. Records reach a task through ``resolve_task(record)``: their
``task`` field, a forced name (``codeplan score --task``), or for BBH rows a bare subtask name
(``boolean_expressions``) recognised from the row's id / source.

Data folder (``codeplan tasks prepare``): ``--data-dir``, else ``$CODEPLAN_DATA``, else
``../shared/data`` relative to the current directory. ``tasks prepare`` is :class:`PrepareStage`, a
source stage run by ``run_stage`` like every command (its ``-i`` files are the run's inputs).
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from codeplan_tools.core.errors import UsageError

if TYPE_CHECKING:
    from codeplan_tools.core.stage import StageContext

Adapter = Callable[[Iterable[dict], str], Iterator[dict]]
"""``adapter(rows, path)`` turns the rows of one source file into records with ``id``, ``question``,
``answer`` (and any extra fields); it sees the whole file so it can number rows or shuffle options."""


@dataclass(frozen=True)
class Task:
    name: str
    """Registry name, also the records' ``task`` field: ``gsm8k``, ``bbh/boolean_expressions``, ``synth/x``."""
    scorer: str
    """Scorer family name in ``codeplan_tools.eval.scorers``."""
    files: tuple[str, ...] = ()
    """Source files relative to the data folder (``gsm8k/test.jsonl.zst``)."""
    instruction: str = ""
    """Answer-format instruction appended to the question in prepared prompts."""
    adapter: Adapter | None = None
    """Public file format -> records (None: rows already have ``question``/``answer``)."""
    subtasks: Callable[[Mapping], dict[str, str]] | None = None
    """record -> {dimension: value} for per-subtask accuracy (e.g. {"level": "3", "subject": "Algebra"})."""
    difficulty: str | None = None
    """The subtask dimension that is a difficulty (plotted as accuracy vs difficulty)."""
    scorer_options: Mapping[str, Any] = field(default_factory=dict)
    """Passed to the scorer with every sample (e.g. ``labels`` of a closed label set)."""
    group: str | None = None
    """Tasks reported together as well as one by one (``bbh``)."""
    row_filter: Callable[[Mapping], bool] | None = None
    """Keep only the rows for which this is true (when a file holds several tasks)."""
    description: str = ""
    corpus: bool = False
    """A training corpus (``tasks.corpora``): prompt/response records, no scorer, no instruction, no
    ``task`` field; read from ``-i FILE|DIR``, else from the folder named like the task under the data
    folder."""

    def subtask_values(self, record: Mapping) -> dict[str, str]:
        if self.subtasks is None:
            return {}
        try:
            return {k: str(v) for k, v in self.subtasks(record).items() if v is not None and v != ""}
        except (KeyError, TypeError, ValueError):
            return {}

    def gold_text(self, record: Mapping) -> str:
        """The gold written as a model answer: the worked solution where there is one, else the answer."""
        solution = record.get("solution")
        if self.scorer in ("numeric", "math") and isinstance(solution, str) and solution.strip():
            return solution
        return str(record.get("answer", ""))


_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False
# Modules that register tasks; a missing optional module (synth) is skipped.
TASK_MODULES = (
    "codeplan_tools.eval.tasks.benchmarks",
    "codeplan_tools.eval.tasks.synth",
    "codeplan_tools.eval.tasks.corpora",
)


def register_task(task: Task, aliases: Iterable[str] = (), replace: bool = False) -> Task:
    """Add ``task`` to the registry (``replace=True`` to redefine a name); return it."""
    if task.name in _TASKS and not replace and _TASKS[task.name] != task:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    for alias in aliases:
        _ALIASES[alias] = task.name
    return task


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def list_tasks() -> list[Task]:
    _load()
    return [_TASKS[k] for k in sorted(_TASKS)]


def find_task(name: str) -> Task | None:
    _load()
    name = name.strip()
    return _TASKS.get(name) or _TASKS.get(_ALIASES.get(name, "")) or _TASKS.get(name.lower())


def get_task(name: str) -> Task:
    task = find_task(name)
    if task is None:
        groups = sorted({t.group for t in _TASKS.values() if t.group})
        raise UsageError(
            f"unknown task {name!r}; see 'codeplan tasks list' (groups: {', '.join(groups)})"
            if groups
            else f"unknown task {name!r}; see 'codeplan tasks list'"
        )
    return task


def group_members(group: str) -> list[Task]:
    _load()
    return [t for t in list_tasks() if t.group == group]


def expand_task_names(names: str | Iterable[str]) -> list[Task]:
    """``"gsm8k,bbh"`` -> the tasks, a group name standing for all its members (in order, no repeats)."""
    parts = names.split(",") if isinstance(names, str) else list(names)
    out: list[Task] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        members = group_members(part) if find_task(part) is None else []
        for task in members or [get_task(part)]:
            if task not in out:
                out.append(task)
    if not out:
        raise UsageError("name at least one task (see 'codeplan tasks list')")
    return out


def resolve_task(record: Mapping, forced: str | None = None) -> Task:
    """The task a record belongs to: ``forced`` or the record's ``task`` field.

    A group name (``bbh``) is resolved to its member (``bbh/<subtask>``) from the record's ``task``,
    id (``bbh-<subtask>-NNN``) or source path; so is a bare BBH subtask name in a BBH row (the shared
    BBH rows say ``task: "date_understanding"``, which alone would name Kojima's date task).
    """
    _load()
    name = forced or record.get("task")
    if not isinstance(name, str) or not name:
        raise UsageError("record has no 'task' field; name the task with --task NAME")
    own = record.get("task")
    own = own if isinstance(own, str) else ""
    if name in _groups():
        for candidate in (own.split("/")[-1], _member_from_id(record, name), _member_from_source(record)):
            hit = _TASKS.get(f"{name}/{candidate}") if candidate else None
            if hit:
                return hit
        raise UsageError(
            f"a record of task group {name!r} does not say which {name} task it is (task field or id)"
        )
    if "/" not in name and f"bbh/{name}" in _TASKS and _is_bbh_row(record):
        return _TASKS[f"bbh/{name}"]
    task = find_task(name)
    if task is None:
        hits = [t for t in _TASKS.values() if t.group and t.name.split("/", 1)[-1] == name]
        if len(hits) == 1:
            return hits[0]
        return get_task(name)  # raises with the hint
    return task


def _groups() -> set[str]:
    return {t.group for t in _TASKS.values() if t.group}


def _is_bbh_row(record: Mapping) -> bool:
    return str(record.get("id", "")).startswith("bbh-") or "BIG-Bench-Hard" in str(record.get("source", ""))


def _member_from_id(record: Mapping, group: str) -> str:
    rid = str(record.get("id", ""))
    return rid[len(group) + 1 :].rsplit("-", 1)[0] if rid.startswith(f"{group}-") else ""


def _member_from_source(record: Mapping) -> str:
    source = str(record.get("source", ""))
    return source.rsplit("/", 1)[1].split(".", 1)[0] if "/" in source else ""


def field_subtasks(*fields: str) -> Callable[[Mapping], dict[str, str]]:
    """Subtasks read from record fields (dotted paths such as ``meta.synth.k`` work)."""

    def get(record: Mapping) -> dict[str, str]:
        out = {}
        for f in fields:
            cur: Any = record
            for part in f.split("."):
                cur = cur.get(part) if isinstance(cur, Mapping) else None
            if cur is not None:
                out[f.rsplit(".", 1)[-1]] = str(cur)
        return out

    return get


# ---------------------------------------------------------------------------------------------
# Reading source files and preparing records.


def default_data_dir() -> Path:
    """``$CODEPLAN_DATA``, else ``../shared/data`` relative to the current directory."""
    env = os.environ.get("CODEPLAN_DATA")
    return Path(env) if env else Path.cwd() / ".." / "shared" / "data"


def read_rows(path: str | Path) -> Iterator[dict]:
    """Rows of a source file in any of the public layouts: JSON Lines, a JSON array, a JSON object with
    ``examples`` (BIG-bench / BBH / Kojima) or ``data``, or CSV; compressed with zstd or gzip or not.
    Parquet and Arrow files, folders of them and ``datasets`` folders are streamed row by row."""
    from codeplan_tools.core.columnar import is_columnar, iter_rows
    from codeplan_tools.core.streams import open_input

    if is_columnar(str(path)):
        yield from iter_rows(str(path))
        return

    with open_input(path) as fh:
        data = fh.read()
    name = str(path).lower()
    for ext in (".zst", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".csv"):
        yield from csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        return
    text = data.lstrip()
    if text[:1] in (b"[", b"{"):
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None  # JSON Lines whose first line is an object
        if isinstance(obj, list):
            yield from (r for r in obj if isinstance(r, dict))
            return
        if isinstance(obj, dict):
            for key in ("examples", "data", "rows"):
                if isinstance(obj.get(key), list):
                    yield from (r for r in obj[key] if isinstance(r, dict))
                    return
            yield obj
            return
    for line in data.splitlines():
        if line.strip():
            yield orjson.loads(line)


def prepare_records(
    task: Task,
    data_dir: str | Path | None = None,
    files: Iterable[str | Path] | None = None,
    limit: int | None = None,
    instruction: bool = True,
    gold_response: bool = False,
) -> Iterator[dict]:
    """Records of ``task`` from its files under ``data_dir`` (or from ``files`` in the public format).

    Each record: ``id``, ``task``, ``prompt`` (the question, plus the task's answer-format instruction
    unless ``instruction=False``), ``question``, ``answer`` and the source's extra fields. With
    ``gold_response`` the gold (worked solution or answer) is also written as ``response``, so that
    ``codeplan score`` on the result checks the scorer against the gold (it must give 100%).
    """
    if files:
        paths = [Path(f) for f in files]
    elif task.corpus:
        paths = [(Path(data_dir) if data_dir else default_data_dir()) / task.name]
        if not paths[0].exists():
            raise UsageError(
                f"{task.name}: missing {paths[0]}; pass its Parquet files, their folder or a datasets "
                "folder with -i (or give --data-dir DIR holding a folder of that name)"
            )
    else:
        base = Path(data_dir) if data_dir else default_data_dir()
        if not task.files:
            raise UsageError(
                f"task {task.name!r} has no files to prepare (it is generated, e.g. by 'codeplan synth')"
            )
        paths = [base / f for f in task.files]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise UsageError(
                f"{task.name}: missing {', '.join(missing)}; give --data-dir DIR (or set CODEPLAN_DATA) "
                "or pass the downloaded file with -i FILE"
            )
    n = 0
    for path in paths:
        rows: Iterable[dict] = read_rows(path)
        if task.adapter is not None:
            rows = task.adapter(rows, str(path))
        for row in rows:
            if task.row_filter is not None and not task.row_filter(row):
                continue
            if limit is not None and n >= limit:
                return
            yield to_record(task, row, instruction=instruction, gold_response=gold_response)
            n += 1


class PrepareStage:
    """``tasks prepare`` as a stage: a source (no records in) writing the records of ``tasks`` in turn
    (:func:`prepare_records` with the other arguments); counts ``written.<task>`` (``run_stage`` counts
    ``written``). ``files`` (``-i``) read one task's public files, so they need exactly one task."""

    name = "tasks"

    def __init__(
        self,
        tasks: list[Task],
        data_dir: str | Path | None = None,
        files: Iterable[str | Path] | None = None,
        limit: int | None = None,
        instruction: bool = True,
        gold_response: bool = False,
    ) -> None:
        self.files = list(files or [])
        if self.files and len(tasks) != 1:
            raise UsageError("-i FILE reads one task's public file: name exactly one task")
        self.tasks = tasks
        self.data_dir, self.limit = data_dir, limit
        self.instruction, self.gold_response = instruction, gold_response

    def run(self, records: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        stats = ctx.stats
        for task in self.tasks:
            key = f"written.{task.name}"
            for record in prepare_records(
                task, self.data_dir, self.files, self.limit, self.instruction, self.gold_response
            ):
                stats.inc(key)
                yield record


def to_record(task: Task, row: Mapping, instruction: bool = True, gold_response: bool = False) -> dict:
    if task.corpus:  # the adapter made the record (prompt, response, provenance)
        made = dict(row)
        if not made.get("id"):
            from codeplan_tools.core.records import derive_id

            made["id"] = derive_id(made)
        return made
    question = row.get("question")
    if not isinstance(question, str):
        raise UsageError(f"{task.name}: a row has no question after conversion: {sorted(row)}")
    rid = row.get("id")
    record: dict[str, Any] = {"id": str(rid) if rid is not None else "", "task": task.name}
    prompt = question
    if instruction and task.instruction:
        prompt = f"{question}\n\n{task.instruction}"
    record["prompt"] = prompt
    for key, value in row.items():
        if key not in ("id", "task", "prompt"):
            record[key] = value
    if not record["id"]:
        from codeplan_tools.core.records import derive_id

        record["id"] = derive_id(record)
    if gold_response:
        record["response"] = task.gold_text(record)
    return record
