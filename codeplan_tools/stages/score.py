"""``codeplan score`` as a library: check every sample of every record and write ``meta.score``.

``score_records(records, config, stats)`` is an iterator of records in, records out. For each record:

1. the task comes from ``config.task`` or the record's ``task`` (``codeplan_tools.eval.tasks.resolve_task``);
2. the texts to check are the record's ``samples`` (what ``generate`` wrote; each sample's ``response``,
   or its ``text`` when the response is empty or missing, e.g. when the format could not be parsed).
   A record **without** ``samples`` is scored on its ``response`` as one sample; this is how gold
   feeding works (``codeplan tasks prepare --gold-response | codeplan score`` must give 100%), and it
   also means a benchmark file whose rows carry a worked ``solution`` (read as ``response``) scores
   its own gold: ``meta.score.source`` says ``response`` and the run's stats count
   ``records_without_samples``. An empty ``samples`` list (generation failed) is one unanswered sample,
   so it counts as wrong rather than disappearing;
3. the task's scorer gives one ``Verdict`` per sample (math in worker processes with a hard timeout);
4. ``meta.score`` gets the per-sample verdicts and the per-record aggregates: ``n``, ``n_correct``,
   ``accuracy`` (= n_correct / n), the same with ``_strict``, ``unextracted``, ``timed_out``,
   ``hedged`` (answers that name several answers) and ``invalid`` (a marked answer not valid for the
   task), each sample counted in at most one of the four, and for
   ``n > 1`` unbiased ``pass@k`` and majority vote ``maj@k`` for k = 1, 2, 4, ... n; ``correct`` is the
   single sample's verdict, or with several samples whether the majority answer is right (a tie is no
   majority). ``subtasks`` and ``difficulty`` carry what the report splits by.

Unscorable records. A record whose ``task`` is unknown or that has no usable gold answer (reasons
``unknown-task`` and ``no-gold``; an ``answer`` of the wrong type is ``no-gold`` naming its type) is
handed to ``reject`` with its file and line when one is given (``--on-bad-record skip``). A record
whose ``meta``, ``task``, ``samples`` (or ``response`` when there are no samples) has the wrong JSON
type is a bad record: rejected like a malformed line (``{"line": ...}``, reason ``bad-record:
samples is an object, not a list``, counted in ``bad_records``); a sample must be an object or a
string, its ``response`` and ``text`` strings. A wrong-typed ``samples`` is never replaced by the
gold ``response``. Without ``reject`` the run stops with ``BadRecord`` (exit 65, ``file:line:
reason``), after the records before it in its chunk are scored and yielded.

Positions come from ``where()``, the file and line of the record the stage's reader handed out last;
without it a record is named by its place in ``records`` (``<records>:N``). When reading ``records``
fails, the records already taken are scored and yielded before the error is raised
(:func:`codeplan_tools.stages.filter.take_batches`), so nothing read is lost.

``load_run`` (the runs of ``--compare``) reads the same way: a malformed line, or a scored record
whose ``meta.score`` has a field of the wrong type, stops with exit 65 and ``file:line`` (with
``--on-bad-record skip``: left out); what is left out, unscorable records included, is counted in
the report's ``unscored_records`` and named on stderr with its file and line (the first 20).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeplan_tools.core.errors import BadRecord, UsageError
from codeplan_tools.core.records import InvalidRecord, WrongType, normalize, parse_record, set_meta
from codeplan_tools.core.stage import bad_record, take_batches
from codeplan_tools.core.stats import Stats
from codeplan_tools.eval.report import RunReport, default_ks, maj_at_k, pass_at_k, score_type_error
from codeplan_tools.eval.scorers import NoGold, Scorer, Verdict, get_scorer
from codeplan_tools.eval.tasks import Task, resolve_task

# (file, line) of a record, and the line itself when the reader gives it (see filters.bad_record).
Where = tuple

SCORE_VERSION = 2  # bump when verdicts of the same input could change; part of the resume key


@dataclass(kw_only=True)
class ScoreConfig:
    task: str | None = None
    """Force this task for every record (for records without a ``task`` field)."""
    timeout: float = 5.0
    """Hard limit in seconds for checking one math answer (the worker is killed past it)."""
    workers: int = 0
    """Math-verify worker processes; 0 = one per CPU, at most 8."""
    chunk_size: int = 256
    """Records scored together (math answers of a chunk are checked in parallel)."""
    ks: tuple[int, ...] | None = None
    """k values of pass@k / maj@k; default 1, 2, 4, ... up to the number of samples, and that number."""

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, min(8, os.cpu_count() or 1))

    def settings(self) -> dict[str, Any]:
        """What determines the output (the resume key of ``codeplan score -o FILE``)."""
        return {
            "task": self.task,
            "timeout": self.timeout,
            "ks": list(self.ks or ()),
            "version": SCORE_VERSION,
        }


def sample_texts(record: Mapping) -> tuple[list[str | None], str]:
    """The texts to check and where they came from (``samples`` or ``response``).

    Raises :class:`WrongType` when ``samples`` (or ``response``, scored when there are no samples)
    has a type that cannot be scored: a wrong type is a bad record, never a fallback to ``response``.
    """
    samples = record.get("samples")
    if samples is None:
        response = record.get("response")
        if response is not None and type(response) is not str:
            raise WrongType("response", response, "a string")
        return [response], "response"
    if type(samples) is not list:
        raise WrongType("samples", samples, "a list")
    return ([_sample_text(s, j) for j, s in enumerate(samples)] or [None]), "samples"


def _sample_text(sample: Any, j: int) -> str | None:
    if type(sample) is str:
        return sample
    if type(sample) is not dict:
        raise WrongType(f"samples[{j}]", sample, "an object or a string")
    response, text = sample.get("response"), sample.get("text")
    for name, value in (("response", response), ("text", text)):
        if value is not None and type(value) is not str:
            raise WrongType(f"samples[{j}].{name}", value, "a string")
    if response is not None and response.strip():
        return response
    return text if text is not None else response


class _Scorers:
    """One scorer instance per family for the run (the math pool is shared and closed at the end)."""

    def __init__(self, config: ScoreConfig):
        self.config = config
        self._by_name: dict[str, Scorer] = {}

    def get(self, name: str) -> Scorer:
        if name not in self._by_name:
            self._by_name[name] = get_scorer(
                name, timeout=self.config.timeout, workers=self.config.resolved_workers()
            )
        return self._by_name[name]

    def close(self) -> None:
        for s in self._by_name.values():
            s.close()


def score_records(
    records: Iterable[dict],
    config: ScoreConfig,
    stats: Stats,
    reject: Callable[..., None] | None = None,
    stamp: Callable[[dict, dict], dict] | None = None,
    where: Callable[[], Where | None] | None = None,
) -> Iterator[dict]:
    """Yield each record with ``meta.score`` (see the module docstring); ``stamp(record, values)`` sets it
    (``StageContext.stamp`` adds the resume key), ``reject(record, reason, **details)`` takes unscorable
    records (else they raise ``BadRecord``), ``where()`` gives the file and line of the record last read."""
    scorers = _Scorers(config)

    def positioned() -> Iterator[tuple[dict, Where]]:
        for index, record in enumerate(records, 1):
            yield record, (where and where()) or ("<records>", index)

    try:
        for chunk in take_batches(positioned(), config.chunk_size):
            yield from _score_chunk(chunk, config, stats, scorers, reject, stamp)
    finally:
        scorers.close()


class _Unscorable(Exception):
    """Why a record cannot be scored: ``code`` is the reject reason, ``detail`` the message."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def _plan(record: dict, config: ScoreConfig, scorers: _Scorers) -> tuple[Task, Scorer, list[str | None], str]:
    """The task, scorer and texts of one record, or ``_Unscorable``."""
    try:
        meta, own_task = record.get("meta"), record.get("task")
        if meta is not None and type(meta) is not dict:  # meta.score is written into it
            raise WrongType("meta", meta, "an object")
        if own_task is not None and type(own_task) is not str:
            raise WrongType("task", own_task, "a string")
        texts, source = sample_texts(record)
    except WrongType as exc:
        raise _Unscorable("bad-record", str(exc)) from None
    try:
        task = resolve_task(record, config.task)
        scorer = scorers.get(task.scorer)
        scorer.gold(record, task.scorer_options)
    except UsageError as exc:
        raise _Unscorable("unknown-task", str(exc)) from None
    except NoGold as exc:
        raise _Unscorable("no-gold", str(exc)) from None
    return task, scorer, texts, source


def _score_chunk(chunk: list[tuple[dict, Where]], config, stats, scorers, reject, stamp) -> Iterator[dict]:
    plans: list[tuple[dict, Task, Scorer, list[str | None], str] | None] = []
    batches: dict[str, list[tuple[int, int, tuple]]] = {}
    failure: BadRecord | None = None  # fail mode: raised once the records before it are yielded
    for i, (record, where) in enumerate(chunk):
        try:
            task, scorer, texts, source = _plan(record, config, scorers)
        except _Unscorable as exc:
            if reject is None:
                failure = BadRecord(where[0], where[1], exc.detail)
                break
            plans.append(None)
            if exc.code == "bad-record":
                bad_record(record, exc.detail, where, fail=False, stats=stats, reject=reject)
            else:
                reject(record, exc.code, detail=exc.detail, file=where[0], line=where[1])
            continue
        plans.append((record, task, scorer, texts, source))
        for j, text in enumerate(texts):
            batches.setdefault(task.scorer, []).append((i, j, (text, record, task.scorer_options)))
    verdicts: dict[tuple[int, int], Verdict] = {}
    for name, items in batches.items():
        for (i, j, _item), verdict in zip(
            items, scorers.get(name).score_many([it for _i, _j, it in items]), strict=True
        ):
            verdicts[(i, j)] = verdict
    for i, plan in enumerate(plans):
        if plan is None:
            continue
        record, task, scorer, texts, source = plan
        values = summarize(task, scorer, [verdicts[(i, j)] for j in range(len(texts))], record, config.ks)
        values["source"] = source
        _count(stats, values)
        (stamp or _set_meta)(record, values)
        yield record
    if failure is not None:
        raise failure


def _set_meta(record: dict, values: dict) -> dict:
    return set_meta(record, "score", values)


def summarize(
    task: Task, scorer: Scorer, verdicts: list[Verdict], record: Mapping, ks: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """``meta.score`` of one record from its samples' verdicts."""
    n = len(verdicts)
    n_correct = sum(v.correct for v in verdicts)
    n_strict = sum(v.correct_strict for v in verdicts)
    values: dict[str, Any] = {"task": task.name, "scorer": task.scorer}
    if task.group:
        values["group"] = task.group
    subtasks = task.subtask_values(record)
    if subtasks:
        values["subtasks"] = subtasks
    if task.difficulty and task.difficulty in subtasks:
        values["difficulty"] = task.difficulty
    values.update(
        n=n,
        n_correct=n_correct,
        n_correct_strict=n_strict,
        accuracy=n_correct / n,
        accuracy_strict=n_strict / n,
        # Unextracted: no answer found; a hedge, an invalid marked answer or a timeout is counted apart.
        unextracted=sum(v.extracted is None and not (v.timed_out or v.hedged or v.invalid) for v in verdicts),
        unextracted_strict=sum(
            v.extracted_strict is None and not (v.timed_out or v.hedged_strict or v.invalid) for v in verdicts
        ),
        timed_out=sum(v.timed_out for v in verdicts),
        hedged=sum(v.hedged for v in verdicts),
        invalid=sum(v.invalid for v in verdicts),
    )
    for key, agg in _extras(verdicts).items():
        values[key] = agg
    keys = [v.extracted for v in verdicts]
    corrects = [v.correct for v in verdicts]
    if n == 1:
        values["correct"] = corrects[0]
    else:
        kk = [k for k in (ks or default_ks(n)) if 1 <= k <= n]
        values["pass@k"] = {str(k): round(pass_at_k(n, n_correct, k), 6) for k in kk}
        if scorer.votable:
            majority = {str(k): maj_at_k(keys[:k], corrects[:k]) for k in kk}
            values["maj@k"] = {k: v[1] for k, v in majority.items()}
            values["majority"] = majority[str(n)][0] if str(n) in majority else maj_at_k(keys, corrects)[0]
            values["correct"] = maj_at_k(keys, corrects)[1]
        else:
            values["correct"] = n_correct * 2 > n
    values["samples"] = [v.to_dict() for v in verdicts]
    return values


def _extras(verdicts: list[Verdict]) -> dict[str, Any]:
    """Family extras per record: integers are summed (instruction counts), floats averaged (F1)."""
    out: dict[str, Any] = {}
    keys = {
        k
        for v in verdicts
        for k, x in v.extra.items()
        if isinstance(x, (int, float)) and not isinstance(x, bool)
    }
    for key in sorted(keys):
        vals = [v.extra.get(key, 0) for v in verdicts]
        if all(isinstance(x, int) for x in vals):
            out[key] = sum(vals)
        else:
            out[key] = round(sum(vals) / len(vals), 6)
    return out


def _count(stats: Stats, values: Mapping) -> None:
    stats.inc("records_scored")
    stats.inc("samples_scored", values["n"])
    stats.inc("samples_correct", values["n_correct"])
    stats.inc("samples_correct_strict", values["n_correct_strict"])
    stats.inc("samples_unextracted", values["unextracted"])
    stats.inc("samples_timed_out", values["timed_out"])
    stats.inc("samples_hedged", values["hedged"])
    stats.inc("samples_invalid", values["invalid"])
    if values.get("source") == "response":
        stats.inc("records_without_samples")


def run_names(specs: Iterable[str]) -> list[tuple[str, str]]:
    """``NAME=FILE`` or ``FILE`` -> (name, file); a bare file is named after it without extensions."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or os.path.exists(spec):
            name, path = Path(spec).name, spec
            for ext in (".zst", ".gz", ".jsonl", ".json"):
                if name.endswith(ext):
                    name = name[: -len(ext)]
        base, i = name, 2
        while name in {n for n, _ in out}:
            name, i = f"{base}-{i}", i + 1
        out.append((name, path))
    return out


def load_run(path: str, name: str, config: ScoreConfig, on_bad_record: str = "fail") -> RunReport:
    """The report of one run file: records that carry ``meta.score`` are taken as scored, the others are
    scored now. A malformed line stops with ``BadRecord`` (exit 65, ``file:line``) unless
    ``on_bad_record`` is ``skip``; skipped lines and unscorable records are counted as
    ``unscored_records`` and each is named on stderr (file, line and reason; the first 20)."""
    from codeplan_tools.core.streams import iter_lines

    if not os.path.exists(path):
        raise UsageError(f"run file not found: {path}")
    report = RunReport(name)
    stats = Stats("score")
    warn = _Warnings(f"codeplan score: warning: {name}")
    last_read: Where | None = None  # the file and line of the record unscored() handed out last

    def bad_line(file: str, lineno: int, reason: str) -> None:
        if on_bad_record == "fail":
            raise BadRecord(file, lineno, reason)
        report.unscored += 1
        warn(f"{file}:{lineno}: bad-record: {reason} (left out)")

    def unscored() -> Iterator[dict]:
        nonlocal last_read
        # Skip mode: damaged stretches of the file (a corrupt frame) are named and reading goes on.
        on_damage = None if on_bad_record == "fail" else (lambda damage: warn(damage.message()))
        for file, lineno, line in iter_lines([path], on_damage):
            try:
                record = parse_record(line)
            except InvalidRecord as exc:
                bad_line(file, lineno, str(exc))
                continue
            meta = record.get("meta")
            score = meta.get("score") if isinstance(meta, dict) else None
            if isinstance(score, dict) and "task" in score:
                reason = score_type_error(score)
                if reason is None:
                    report.add(record)
                else:
                    bad_line(file, lineno, reason)
                continue
            normalize(record)
            last_read = (file, lineno)
            yield record

    def count_reject(record: dict, reason: str, file: str = "", line: int = 0, **details: Any) -> None:
        report.unscored += 1
        detail = details.get("detail")
        warn(f"{file}:{line}: {reason}{': ' + detail if detail else ''} (left out)")

    for record in score_records(unscored(), config, stats, reject=count_reject, where=lambda: last_read):
        report.add(record)
    return report


class _Warnings:
    """Warnings on stderr, the first ``limit`` of them, then one line saying that more were left out."""

    def __init__(self, prefix: str, limit: int = 20):
        self.prefix, self.limit, self.count = prefix, limit, 0

    def __call__(self, message: str) -> None:
        import sys

        self.count += 1
        if self.count <= self.limit:
            print(f"{self.prefix}: {message}", file=sys.stderr)
        elif self.count == self.limit + 1:
            print(f"{self.prefix}: more records were left out (not named)", file=sys.stderr)
