"""``codeplan score`` as a library: check every sample of every record and write ``meta.score``.

``score_records(records, config, ctx=None)`` is an iterator of records in, records out (the stage
:class:`ScoreStage` run on ``ctx``, an in-memory :class:`~codeplan_tools.core.stage.StageContext`
by default). For each record:

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

Plans (``meta.score.plan``; ``codeplan_tools.eval.plans``: plans are parsed, never run). A record gets
it when it carries a reference plan (the field ``config.gold_plan_field``, ``gold_plan`` by default:
what ``synth --keep-gold-plan`` writes) or when one of its samples has a ``plan``; a record scored on its
``response`` counts its own ``plan`` as that one sample's. The layout::

    "plan": {
      "record": {exact, exact_no_comments, literal_precision, literal_recall},  # the record's plan vs the reference
      "samples": [{"follows": true|false|null, exact, ...} | null, ...],       # per sample, null: no plan
      "following_rate": 0.75 | null,          # of the samples whose "follows" is known
      "exact_rate": 0.5 | null, "exact_no_comments_rate": 1.0 | null           # of the samples with a plan
    }

``follows`` is plan-following (:func:`~codeplan_tools.eval.plans.follows_plan`): whether the sample's
extracted (lenient) answer equals the value its own plan prints, null where that value cannot be
computed without running the plan or there is no answer. The fidelity keys (``record``, a sample's
``exact`` ... ``literal_recall``, the ``_rate`` keys) appear only with a reference plan
(:func:`~codeplan_tools.eval.plans.plan_fidelity`: exact after whitespace normalisation, exact with
comments also ignored, precision/recall of the value literals). A reference or a plan that is not a
string is a bad record. The run counts ``samples_plan_followed`` / ``_not_followed`` / ``_unknown`` and
``plans_compared`` / ``plans_exact`` / ``plans_exact_no_comments`` (only when some record has plans).

Given plans (``meta.score.given_plan``): a record that carries a string ``plan_answer`` (the field
``config.plan_answer_field``; ``synth --plan-variant counterfactual|other-problem`` writes it, with
``plan`` a changed plan, for ``generate --given-plan``) asks whether each sample followed the plan it was
given or the prompt. Each sample's answer is judged against ``plan_answer`` by the very scorer and
verdict (lenient) that judge it against ``answer``: the scorer checks the sample again against the
record with ``plan_answer`` as its ``answer`` (and without the true answer's aliases). A sample is
``"plan"`` when it matches ``plan_answer``, else ``"prompt"`` when it is correct, else ``"neither"``.
When the scorer finds ``plan_answer`` itself correct (the changed plan still gives the true answer), the
record is no counterfactual: every sample is ``"same"`` and the rates are null (the report leaves it
out). The layout::

    "given_plan": {
      "plan_answer": "42",                        # as the record has it
      "samples": ["plan", "prompt", "neither", ...] | ["same", ...],
      "plan_rate": 0.5 | null, "prompt_rate": 0.25 | null    # of the record's samples; null for "same"
    }

The run counts ``given_plan_followed_plan`` / ``_followed_prompt`` / ``given_plan_neither`` /
``given_plan_same`` (samples; all four once some record has a ``plan_answer``). A record without the
field is scored exactly as before (no key, no counter). A ``plan_answer`` that is not a string is a bad
record; a blank one, or one the task's scorer cannot read as a gold answer, is ``no-gold``.

Unscorable records. A record whose ``task`` is unknown or that has no usable gold answer (reasons
``unknown-task`` and ``no-gold``; an ``answer`` of the wrong type is ``no-gold`` naming its type) is
rejected (``ctx.reject``, with its file and line) when the context skips bad records
(``--on-bad-record skip``). A record whose ``meta``, ``task``, ``samples`` (or ``response`` when
there are no samples) has the wrong JSON type is a bad record (``ctx.bad_record``): rejected like a
malformed line (``{"line": ...}``, reason ``bad-record: samples is an object, not a list``, counted
in ``bad_records``); a sample must be an object or a string, its ``response`` and ``text`` strings. A
wrong-typed ``samples`` is never replaced by the gold ``response``. When the context fails on bad
records (the default) the run stops with ``BadRecord`` (exit 65, ``file:line: reason``), after the
records before it in its chunk are scored and yielded.

Positions come from ``ctx.where``, the file and line of the record the stage's reader handed out,
taken as each record is read (a chunk holds many); without a reader a record is named by its place in
``records`` (``<records>:N``). When reading ``records`` fails, the records already taken are scored
and yielded before the error is raised (:func:`codeplan_tools.core.stage.take_batches`), so nothing
read is lost.

Worker processes (``--workers N``, 0 = one per CPU, at most 8). ``N`` is the number of processes
that check answers at once, and the verdicts do not depend on it. ``codeplan score`` reads, scores and
writes in one process and checks math answers in N math-verify processes (the hard timeout needs a
process that can be killed), each kept busy: a few answers are queued to each (every one with its whole
timeout), each process parses a gold answer once (a bounded cache keyed by its text), the processes
start while the first records are read, and a chunk's answers are checked while the next chunk is read
and the one before it written. The other families check answers in this process: they take
microseconds a sample, less than a second process costs. (Run with ``run_stage(..., workers=N)`` from
Python, the stage also works in the runner's pool, ``codeplan_tools.core.pool``: each of its processes
then checks math answers in one math-verify process of its own.) Unscorable records are rejected as
they are read, so the rejects come in input order whatever the chunks are.

``score_stream`` is ``codeplan score``: the stage over files or pipes, resumed from ``-o FILE``, then
the report of the run on stderr and in ``--report``/``--plot`` files (after a resumed run, of the
whole output file). ``compare_runs`` is ``codeplan score --compare``: a :class:`Comparison` of run
files. ``load_run`` reads a run file for it the same way the stage reads: a malformed line, or a
scored record whose ``meta.score`` has a field of the wrong type, stops with exit 65 and
``file:line`` (with ``--on-bad-record skip``: left out); what is left out, unscorable records
included, is counted in the report's ``unscored_records`` and named on stderr with its file and line
(the first 20).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from codeplan_tools.core.errors import BadRecord, UsageError
from codeplan_tools.core.outputs import check_writable
from codeplan_tools.core.records import InvalidRecord, WrongType, normalize, parse_record
from codeplan_tools.core.stage import PerRecordStage, StageContext, StageIO, run_stage, take_batches
from codeplan_tools.core.stats import Stats
from codeplan_tools.core.streams import iter_lines, read_records
from codeplan_tools.eval.report import (
    REPORT_EXTENSIONS,
    Comparison,
    RunReport,
    compare,
    default_ks,
    format_comparison,
    format_table,
    maj_at_k,
    pass_at_k,
    score_type_error,
    write_reports,
)
from codeplan_tools.eval.scorers import NoGold, Scorer, Verdict, get_scorer
from codeplan_tools.eval.tasks import Task, resolve_task

SCORE_VERSION = 4  # bump when verdicts of the same input could change; part of the resume key


@dataclass(kw_only=True)
class ScoreConfig:
    task: str | None = None
    """Score every record as this task (for records without a 'task' field); see 'codeplan tasks list'."""
    timeout: float = 5.0
    """Hard limit for checking one math answer; a check past it is killed and counted as timed out."""
    workers: int = 0
    """Worker processes for math-verify checks; 0 = one per CPU (at most 8)."""
    chunk_size: int = 256
    """Records scored together (math answers of a chunk are checked in parallel)."""
    ks: tuple[int, ...] | None = None
    """k values of pass@k / maj@k; default 1, 2, 4, ... up to the number of samples, and that number."""
    report: tuple[str, ...] = ()
    """Also write the report to FILE: JSON for .json, Markdown for .md. Repeatable."""
    plot: str | None = None
    """Draw accuracy per task (and per difficulty where a task has one) for the run(s) as a PNG."""
    average_over: Literal["benchmarks", "tasks"] = "benchmarks"
    """Units of the average relative improvement: 'benchmarks' counts BBH's 27 tasks as one benchmark;
    'tasks' counts every task."""
    gold_plan_field: str = "gold_plan"
    """Field holding a reference plan: records that have it get meta.score.plan (fidelity of the record's
    plan and of each sample's plan to it)."""
    plan_answer_field: str = "plan_answer"
    """Field holding the answer that following the record's (changed) plan gives: records that have it
    get meta.score.given_plan, whether each sample followed the given plan, the prompt or neither."""

    def __post_init__(self) -> None:
        for path in self.report:
            if not path.endswith(REPORT_EXTENSIONS):
                raise UsageError(f"--report {path}: use a name ending in .json or .md")
        if self.average_over not in ("benchmarks", "tasks"):
            raise UsageError(f"--average-over must be benchmarks or tasks, not {self.average_over!r}")

    def resolved_workers(self) -> int:
        """Processes that check answers at once: ``workers``, or one per CPU (at most 8)."""
        return self.workers if self.workers > 0 else max(1, min(8, os.cpu_count() or 1))

    def settings(self) -> dict[str, Any]:
        """What determines the output (the resume key of ``codeplan score -o FILE``)."""
        return {
            "task": self.task,
            "timeout": self.timeout,
            "ks": list(self.ks or ()),
            "gold_plan_field": self.gold_plan_field,
            "plan_answer_field": self.plan_answer_field,
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


def sample_plans(record: Mapping, source: str) -> list[str | None]:
    """The plan of each text ``sample_texts`` gives: each sample's ``plan`` (None for a sample without
    one, a blank one, or a string sample), or the record's ``plan`` when its ``response`` is scored.

    Raises :class:`WrongType` for a plan that is neither a string nor null."""
    if source == "response":
        return [_plan_text(record.get("plan"), "plan")]
    samples = record.get("samples") or ()
    plans = [
        _plan_text(s.get("plan"), f"samples[{j}].plan") if type(s) is dict else None
        for j, s in enumerate(samples)
    ]
    return plans or [None]


def reference_plan(record: Mapping, field: str) -> str | None:
    """The record's reference plan (the field ``field``, e.g. ``gold_plan``); None when absent or blank."""
    return _plan_text(record.get(field), field)


def _plan_text(value: Any, name: str) -> str | None:
    """A plan field's text; None for a blank one (a format without plans writes ``""``)."""
    if value is not None and type(value) is not str:
        raise WrongType(name, value, "a string")
    return value if value and not value.isspace() else None


def plan_scores(
    record_plan: Any, reference: str | None, plans: Sequence[str | None], verdicts: Sequence[Verdict]
) -> dict[str, Any] | None:
    """``meta.score.plan`` of one record (module docstring); None when it has no reference plan and
    none of its samples has a plan."""
    if reference is None and all(p is None for p in plans):
        return None
    from codeplan_tools.eval.plans import follows_plan, plan_fidelity

    samples: list[dict[str, Any] | None] = []
    for plan, verdict in zip(plans, verdicts, strict=True):
        if plan is None:
            samples.append(None)
            continue
        sample: dict[str, Any] = {"follows": follows_plan(plan, verdict.extracted)}
        if reference is not None:
            sample.update(plan_fidelity(plan, reference))
        samples.append(sample)
    planned = [s for s in samples if s is not None]
    known = [s["follows"] for s in planned if s["follows"] is not None]
    out: dict[str, Any] = {}
    if reference is not None and isinstance(record_plan, str):
        out["record"] = plan_fidelity(record_plan, reference)
    out["samples"] = samples
    out["following_rate"] = sum(known) / len(known) if known else None
    if reference is not None:
        for key in ("exact", "exact_no_comments"):
            out[f"{key}_rate"] = sum(s[key] for s in planned) / len(planned) if planned else None
    return out


def plan_answer_of(record: Mapping, field: str) -> str | None:
    """The answer the record's given plan leads to (the field ``field``); None when absent.

    Raises :class:`WrongType` for a value that is not a string."""
    value = record.get(field)
    if value is not None and type(value) is not str:
        raise WrongType(field, value, "a string")
    return value


# The gold fields besides ``answer`` that a scorer reads (the qa family's aliases, ``qa.golds_of``):
# aliases of the true answer must not count as the plan's answer.
_ALIAS_FIELDS = ("answer_aliases", "aliases")


def with_answer(record: Mapping, answer: str) -> dict:
    """``record`` with ``answer`` as its gold answer and no aliases: a scorer given it judges a sample
    against ``answer`` exactly as it judges it against the record's own (a shallow copy)."""
    view = {k: v for k, v in record.items() if k not in _ALIAS_FIELDS}
    view["answer"] = answer
    return view


def given_plan_scores(
    plan_answer: str, same: Verdict, by_answer: Sequence[Verdict], by_plan: Sequence[Verdict]
) -> dict[str, Any]:
    """``meta.score.given_plan`` of one record (module docstring). ``same`` is ``plan_answer`` itself
    judged against the record's answer; ``by_answer`` / ``by_plan`` each sample's verdict against the
    answer / against ``plan_answer``."""
    counterfactual = not same.correct
    if counterfactual:
        samples = [
            "plan" if p.correct else "prompt" if a.correct else "neither"
            for a, p in zip(by_answer, by_plan, strict=True)
        ]
    else:
        samples = ["same"] * len(by_answer)
    n = len(samples)
    return {
        "plan_answer": plan_answer,
        "samples": samples,
        "plan_rate": samples.count("plan") / n if counterfactual else None,
        "prompt_rate": samples.count("prompt") / n if counterfactual else None,
    }


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
            scorer = get_scorer(name, timeout=self.config.timeout, workers=self.config.resolved_workers())
            scorer.warm()  # math-verify processes start while the rest of the first chunk is read
            self._by_name[name] = scorer
        return self._by_name[name]

    def close(self) -> None:
        for s in self._by_name.values():
            s.close()


class ScoreStage(PerRecordStage):
    """``codeplan score`` as a stage. Every record is scored on its own (``per_record``, possibly in
    a worker process); with a ``report``, the ordered part adds each record's ``meta.score`` to it."""

    name = "score"

    def __init__(self, config: ScoreConfig, report: RunReport | None = None):
        self.config = config
        self.report = report
        self._scorers: _Scorers | None = None  # kept between batches (math-verify processes)

    def per_record(self, records: Iterable[dict], ctx: StageContext) -> Iterator[tuple[dict, Any]]:
        """Yields ``(record, (id, meta.score))`` for each scored record."""
        if self._scorers is None:
            self._scorers = _Scorers(self.config)
        scorers, config = self._scorers, self.config

        def planned() -> Iterator[_Plan]:
            # Each record is planned (task, scorer, texts) as it is read, so an unscorable one is
            # rejected, or stops the run, in input order whatever the chunks are.
            for index, record in enumerate(records, 1):
                try:
                    yield _plan(record, config, scorers)
                except _Unscorable as exc:
                    where = ctx.where or ("<records>", index)
                    if ctx.fail_on_bad_record:  # (raised after the chunk so far is scored)
                        raise BadRecord(where[0], where[1], exc.detail) from None
                    if exc.code == "bad-record":
                        ctx.bad_record(record, exc.detail, index)
                    else:
                        ctx.reject(record, exc.code, detail=exc.detail, file=where[0], line=where[1])

        # Each chunk's answers are sent to the scorers before the chunk before it is finished
        # (summarised, stamped, yielded): the math-verify processes check one chunk while this process
        # reads the next and writes the last. Each chunk still comes out whole and in order, and when
        # reading stops with an error the chunks read before it are finished first.
        chunks = take_batches(planned(), config.chunk_size)
        waiting: _Submitted | None = None
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except Exception:
                if waiting is not None:
                    yield from _yielded(_finish_chunk(waiting, config, ctx))
                raise
            submitted = _submit_chunk(chunk, scorers)
            if waiting is not None:
                yield from _yielded(_finish_chunk(waiting, config, ctx))
            waiting = submitted
        if waiting is not None:
            yield from _yielded(_finish_chunk(waiting, config, ctx))

    def ordered(self, items: Iterable[tuple[dict | bytes, Any]], ctx: StageContext) -> Iterator[dict | bytes]:
        report = self.report
        for record, (record_id, score) in items:
            if report is not None:
                report.add_score(record_id, score)
            yield record

    def for_worker(self) -> ScoreStage:
        """In a worker process of the runner's pool, math answers are checked in one process."""
        return ScoreStage(replace(self.config, workers=1))

    def close(self) -> None:
        if self._scorers is not None:
            self._scorers.close()
            self._scorers = None


def score_records(
    records: Iterable[dict], config: ScoreConfig, ctx: StageContext | None = None
) -> Iterator[dict]:
    """Yield each record with ``meta.score`` (see the module docstring); ``ctx`` (default: in memory,
    bad records fail) counts, stamps ``meta.score`` and takes unscorable records."""
    return ScoreStage(config).run(records, ctx or StageContext("score"))  # type: ignore[return-value]


class _Unscorable(Exception):
    """Why a record cannot be scored: ``code`` is the reject reason, ``detail`` the message."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


# A record to score: the record, its task and scorer, the texts to check and where they came from, the
# plans to measure (each text's plan and the reference plan, see ``plan_scores``) and the answer its
# given plan leads to (``plan_answer``, see ``given_plan_scores``).
_Plans = tuple[list[str | None], str | None]
_Plan = tuple[dict, Task, Scorer, list[str | None], str, _Plans, str | None]


def _plan(record: dict, config: ScoreConfig, scorers: _Scorers) -> _Plan:
    """The task, scorer and texts of one record, or ``_Unscorable``."""
    try:
        meta, own_task = record.get("meta"), record.get("task")
        if meta is not None and type(meta) is not dict:  # meta.score is written into it
            raise WrongType("meta", meta, "an object")
        if own_task is not None and type(own_task) is not str:
            raise WrongType("task", own_task, "a string")
        texts, source = sample_texts(record)
        plans = (sample_plans(record, source), reference_plan(record, config.gold_plan_field))
        plan_answer = plan_answer_of(record, config.plan_answer_field)
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
    if plan_answer is not None:
        field = config.plan_answer_field
        if not plan_answer.strip():
            raise _Unscorable("no-gold", f"'{field}' is blank: give the answer its plan leads to, or drop it")
        try:
            scorer.gold(with_answer(record, plan_answer), task.scorer_options)
        except NoGold as exc:
            raise _Unscorable("no-gold", f"'{field}' is no answer for {task.name}: {exc}") from None
    return record, task, scorer, texts, source, plans, plan_answer


# A chunk whose answers are being checked: its records, and per sample key the verdict's source.
_Submitted = tuple[list[_Plan], dict[tuple, tuple[Callable[[], list[Verdict]], int]]]


def _submit_chunk(chunk: list[_Plan], scorers: _Scorers) -> _Submitted:
    """Send the samples of a chunk's records to their scorers (each checks all its samples of the chunk
    at once); ``_finish_chunk`` takes the verdicts."""
    # Keys: (i, j) sample j of record i against its answer; (i, "plan", j) against its plan_answer;
    # (i, "same") the plan_answer itself against the answer.
    batches: dict[str, list[tuple[tuple, tuple]]] = {}
    for i, (record, task, _scorer, texts, _source, _plans, plan_answer) in enumerate(chunk):
        jobs, options = batches.setdefault(task.scorer, []), task.scorer_options
        for j, text in enumerate(texts):
            jobs.append(((i, j), (text, record, options)))
        if plan_answer is not None:
            # Judged as the answer is: the same scorer, checking against the plan's answer instead.
            as_planned = with_answer(record, plan_answer)
            for j, text in enumerate(texts):
                jobs.append(((i, "plan", j), (text, as_planned, options)))
            jobs.append(((i, "same"), (plan_answer, record, options)))
    places: dict[tuple, tuple[Callable[[], list[Verdict]], int]] = {}
    for name, items in batches.items():
        verdicts_of = scorers.get(name).submit([it for _key, it in items])
        for n, (key, _item) in enumerate(items):
            places[key] = (verdicts_of, n)
    return chunk, places


def _finish_chunk(submitted: _Submitted, config: ScoreConfig, ctx: StageContext) -> Iterator[dict]:
    """The records of a submitted chunk with ``meta.score``, in order."""
    chunk, places = submitted
    got: dict[int, list[Verdict]] = {}  # per scorer batch (by the id of its function): its verdicts

    def verdict(key: tuple) -> Verdict:
        verdicts_of, n = places[key]
        if id(verdicts_of) not in got:
            got[id(verdicts_of)] = verdicts_of()
        return got[id(verdicts_of)][n]

    for i, (record, task, scorer, texts, source, (plans, reference), plan_answer) in enumerate(chunk):
        record_verdicts = [verdict((i, j)) for j in range(len(texts))]
        values = summarize(task, scorer, record_verdicts, record, config.ks)
        values["source"] = source
        plan = plan_scores(record.get("plan"), reference, plans, record_verdicts)
        if plan is not None:
            values["plan"] = plan
            _count_plans(ctx.stats, plan)
        if plan_answer is not None:
            by_plan = [verdict((i, "plan", j)) for j in range(len(texts))]
            given = given_plan_scores(plan_answer, verdict((i, "same")), record_verdicts, by_plan)
            values["given_plan"] = given
            _count_given_plan(ctx.stats, given)
        _count(ctx.stats, values)
        ctx.stamp(record, values)
        yield record


def _yielded(records: Iterator[dict]) -> Iterator[tuple[dict, Any]]:
    for record in records:
        yield record, (record.get("id"), record["meta"]["score"])


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


def _count_plans(stats: Stats, plan: Mapping) -> None:
    """Counters of ``meta.score.plan`` (only records that have one: other runs' counters are unchanged)."""
    for sample in plan["samples"]:
        if sample is None:
            continue
        follows = sample["follows"]
        stats.inc(
            "samples_plan_" + ("unknown" if follows is None else "followed" if follows else "not_followed")
        )
        if "exact" in sample:
            stats.inc("plans_compared")
            stats.inc("plans_exact", sample["exact"])
            stats.inc("plans_exact_no_comments", sample["exact_no_comments"])


# meta.score.given_plan.samples[j] -> the run's counter of such samples.
GIVEN_PLAN_COUNTERS = {
    "plan": "given_plan_followed_plan",
    "prompt": "given_plan_followed_prompt",
    "neither": "given_plan_neither",
    "same": "given_plan_same",
}


def _count_given_plan(stats: Stats, given: Mapping) -> None:
    """Counters of ``meta.score.given_plan``: all four (zeros too) once a record has one, none before."""
    samples = given["samples"]
    for verdict, counter in GIVEN_PLAN_COUNTERS.items():
        stats.inc(counter, samples.count(verdict))


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
    if not os.path.exists(path):
        raise UsageError(f"run file not found: {path}")
    report = RunReport(name)
    warn = _Warnings(f"codeplan score: warning: {name}")
    ctx = _LeftOut(report, warn)

    def bad_line(file: str, lineno: int, reason: str) -> None:
        if on_bad_record == "fail":
            raise BadRecord(file, lineno, reason)
        report.unscored += 1
        warn(f"{file}:{lineno}: bad-record: {reason} (left out)")

    def unscored() -> Iterator[dict]:
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
            ctx.where = (file, lineno)
            yield record

    for _record in ScoreStage(config, report).run(unscored(), ctx):
        pass
    return report


class _LeftOut(StageContext):
    """``load_run``'s context: an unscorable record (also one of the wrong types) is left out of the
    report, counted in ``unscored_records`` and named on stderr."""

    def __init__(self, report: RunReport, warn: _Warnings):
        super().__init__("score", on_bad_record="skip")
        self.report, self.warn = report, warn

    def reject(self, record: dict, reason: str, **details: Any) -> None:
        self.report.unscored += 1
        detail = details.get("detail")
        where = f"{details.get('file', '')}:{details.get('line', 0)}"
        self.warn(f"{where}: {reason}{': ' + detail if detail else ''} (left out)")


class _Warnings:
    """Warnings on stderr, the first ``limit`` of them, then one line saying that more were left out."""

    def __init__(self, prefix: str, limit: int = 20):
        self.prefix, self.limit, self.count = prefix, limit, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= self.limit:
            print(f"{self.prefix}: {message}", file=sys.stderr)
        elif self.count == self.limit + 1:
            print(f"{self.prefix}: more records were left out (not named)", file=sys.stderr)


def _check_report_files(config: ScoreConfig) -> None:
    """``--report`` and ``--plot`` can be written: checked before the run, not after it."""
    for path in config.report:
        check_writable(path, "--report")
    check_writable(config.plot, "--plot")


def score_stream(io: StageIO, config: ScoreConfig) -> Stats:
    """``codeplan score``: score ``io``'s records (resuming from ``io.output``), then report the run on
    stderr (unless ``io.quiet``) and in ``config.report``/``config.plot``; return the counters."""
    _check_report_files(config)
    io = replace(io, resume_settings=config.settings())
    report = RunReport("run")
    # One process here; config.workers is the width of the math-verify pool (module docstring).
    stats = run_stage(io, ScoreStage(config, report))
    if io.output not in (None, "-") and stats["skipped_done"]:
        # A resumed run: report on everything in the output file, not just this invocation's part.
        report = RunReport("run")
        for record in read_records([io.output]):
            report.add(record)
    if not io.quiet:
        print(format_table(report), file=sys.stderr)
        if stats["records_without_samples"]:
            print(
                f"codeplan score: note: {int(stats['records_without_samples'])} records had no 'samples'; "
                "their 'response' (or 'solution') was scored instead",
                file=sys.stderr,
            )
    write_reports([report], None, config.report, config.plot, config.average_over)
    return stats


def compare_runs(runs: Sequence[str], config: ScoreConfig, *, on_bad_record: str = "fail") -> Comparison:
    """``codeplan score --compare``: the run files (``FILE`` or ``NAME=FILE``, scored or not; the
    first is the baseline) side by side (see ``codeplan_tools.eval.report``)."""
    _check_report_files(config)
    if len(runs) < 2:
        raise UsageError(
            "--compare needs at least two runs: codeplan score --compare A.jsonl.zst B.jsonl.zst"
        )
    reports = [load_run(path, name, config, on_bad_record) for name, path in run_names(runs)]
    return compare(reports, config.average_over)


def report_comparison(comparison: Comparison, config: ScoreConfig, *, quiet: bool = False) -> None:
    """The comparison on stderr (unless ``quiet``) and in ``config.report``/``config.plot``."""
    if not quiet:
        print(format_comparison(comparison), file=sys.stderr)
    write_reports(comparison.runs, comparison, config.report, config.plot, config.average_over)
