"""Reports of scored runs: accuracy with intervals, pass@k, maj@k, and run comparisons.

A report is built from ``meta.score`` alone (``codeplan_tools.stages.score``), so it can be made again from
any scored file without the task registry.

- **Accuracy** per task is the mean over records of the per-record accuracy (the share of its samples
  that are right; with one sample, 0 or 1), with a 95% Wilson score interval over the records. The
  strict-extraction accuracy, the counts of unextracted, hedged (an answer naming several answers),
  invalid (a marked answer that is no option / label / number) and timed-out samples, F1 (QA) and
  instruction-level accuracy (IFEval) stand beside it. Subtasks (BBH task, MATH subject and level,
  MuSiQue hop count, synthetic difficulty) get the same row; tasks of a group (``bbh``) also get a
  group row over all their records.
- **pass@k** is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over
  records; **maj@k** is right when the most frequent extracted answer among the first k samples is
  right, and a tie for the most frequent answer is *not* a majority (counted wrong).
- **Comparison** (``compare``): per benchmark, each run's accuracy, the absolute difference to the first
  run (the baseline) in points and the relative improvement (B - A) / A; the average relative
  improvement across benchmarks (the paper's headline number; BBH's 27 tasks count as one benchmark
  unless ``average_over="tasks"``); and a paired test on the records both runs share (paired
  by task and id): McNemar's exact binomial test when every record has one sample, else a paired
  bootstrap of the mean difference (2,000 resamples, seed 0).

- **Plans** (only when some record has ``meta.score.plan``; the report is otherwise unchanged, byte for
  byte): per task and subtask (so per difficulty), over the samples' plans, the share equal to the
  reference plan (whitespace normalised; and with comments ignored), the mean literal precision and
  recall (n: plans compared to a reference), and the plan-following rate (the answer equals the value
  the sample's own plan prints, over the samples where that is computable); the run's overall
  plan-following rate under the table, and per run in a comparison. JSON: ``plan`` in each row's
  summary and in the run's.

- **Given plans** (only when some record has ``meta.score.given_plan``, i.e. carried a ``plan_answer``;
  otherwise the report is unchanged, byte for byte): over the samples of counterfactual records (their
  ``plan_answer`` differs from the answer), the share that follows the given plan (the answer is the
  plan's), the prompt (the true answer) or neither; samples of records whose plan leads to the true
  answer (``"same"``) are left out and counted apart. Per run, and per task, subtask and group under it,
  in one table: after the run's tables, and in a comparison one table of every run. JSON:
  ``given_plan = {"n", "plan", "prompt", "neither"}`` (n samples, rates as fractions, null when n is 0)
  in each row's summary and in the run's.

A comparison is a :class:`Comparison` (rows, averages and paired tests as dataclasses);
``Comparison.to_dict`` is its JSON form in ``--report FILE.json``.

Writers: ``format_table`` and ``format_comparison`` (stderr), ``write_json``, ``write_markdown``,
``plot_runs`` (PNG), and ``write_reports``, which routes ``--report`` files by their extension
(``.json``, ``.md``) and draws ``--plot``.

A scored record read back (a run given to ``--compare``) is checked first: ``score_type_error`` names
a field of ``meta.score`` whose JSON type the report cannot use, so a hand-edited file gives a bad
record with its line rather than a crash.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

Z95 = 1.959963984540054
# Groups that are one benchmark made of many tasks: they count once in the average relative improvement
# (as in the paper), while the tasks of other groups (e.g. synth) count one by one.
SUITES = {"bbh"}


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (``successes`` may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n or k < 1:
        raise ValueError(f"pass@k needs 1 <= k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(keys: Sequence[str | None], corrects: Sequence[bool]) -> tuple[str | None, bool]:
    """(majority answer, whether it is right) over the given samples; None answers do not vote.

    A tie for the most frequent answer is no majority: (None, False)."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None, False
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None, False
    answer = ranked[0][0]
    right = next(c for k, c in zip(keys, corrects, strict=True) if k == answer)
    return answer, bool(right)


def default_ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value that mean(b - a) differs from 0, by resampling the paired differences."""
    import numpy as np

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) == 0 or not d.any():
        return 1.0
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 200):
        size = min(200, resamples - start)
        idx = rng.integers(0, len(d), size=(size, len(d)))
        means.append(d[idx].mean(axis=1))
    m = np.concatenate(means)
    p = 2 * min((m <= 0).mean(), (m >= 0).mean())
    return float(min(1.0, p))


# ---------------------------------------------------------------------------------------------
# Accumulating a run.


@dataclass
class PlanCell:
    """Plan measures of one row, over the samples' plans (``meta.score.plan.samples``): fidelity to the
    reference plan (samples compared to one) and plan-following (samples where it is known)."""

    compared: int = 0
    exact: int = 0
    exact_no_comments: int = 0
    precision_sum: float = 0.0
    precision_n: int = 0
    recall_sum: float = 0.0
    recall_n: int = 0
    followed: int = 0
    following_n: int = 0

    def add(self, plan: Mapping[str, Any]) -> None:
        for sample in plan.get("samples") or ():
            if sample is None:
                continue
            follows = sample.get("follows")
            if follows is not None:
                self.following_n += 1
                self.followed += bool(follows)
            if "exact" in sample:
                self.compared += 1
                self.exact += bool(sample["exact"])
                self.exact_no_comments += bool(sample.get("exact_no_comments"))
                for key, total, count in (
                    ("literal_precision", "precision_sum", "precision_n"),
                    ("literal_recall", "recall_sum", "recall_n"),
                ):
                    value = sample.get(key)
                    if value is not None:
                        setattr(self, total, getattr(self, total) + float(value))
                        setattr(self, count, getattr(self, count) + 1)

    def merge(self, other: PlanCell) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def following(self) -> float | None:
        return self.followed / self.following_n if self.following_n else None

    def summary(self) -> dict[str, Any]:
        def share(part: float, whole: int) -> float | None:
            return part / whole if whole else None

        out: dict[str, Any] = {}
        if self.compared:
            out.update(
                compared=self.compared,
                exact=share(self.exact, self.compared),
                exact_no_comments=share(self.exact_no_comments, self.compared),
                literal_precision=share(self.precision_sum, self.precision_n),
                literal_recall=share(self.recall_sum, self.recall_n),
            )
        out.update(following=self.following, following_n=self.following_n)
        return out


# meta.score.given_plan.samples[j]: one of these (``codeplan_tools.stages.score.given_plan_scores``).
_GIVEN_PLAN_VERDICTS = ("plan", "prompt", "neither", "same")


@dataclass
class GivenPlanCell:
    """Given-plan counts of one row, over the samples of ``meta.score.given_plan.samples``."""

    plan: int = 0
    prompt: int = 0
    neither: int = 0
    same: int = 0  # samples of records whose plan_answer is the answer: no counterfactual, left out

    def add(self, given: Mapping[str, Any]) -> None:
        for verdict in given.get("samples") or ():
            if verdict in _GIVEN_PLAN_VERDICTS:  # (a file read back is checked by score_type_error)
                setattr(self, verdict, getattr(self, verdict) + 1)

    def merge(self, other: GivenPlanCell) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def n(self) -> int:
        """Samples of counterfactual records."""
        return self.plan + self.prompt + self.neither

    def summary(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "plan": self.plan / n if n else None,
            "prompt": self.prompt / n if n else None,
            "neither": self.neither / n if n else None,
        }


@dataclass
class Cell:
    """Counts of one row of the report (a task, a subtask value or a group)."""

    records: int = 0
    samples: int = 0
    acc_sum: float = 0.0
    acc_strict_sum: float = 0.0
    unextracted: int = 0
    unextracted_strict: int = 0
    timed_out: int = 0
    hedged: int = 0
    invalid: int = 0
    pass_sum: dict[int, float] = field(default_factory=dict)
    pass_n: dict[int, int] = field(default_factory=dict)
    maj_sum: dict[int, int] = field(default_factory=dict)
    maj_n: dict[int, int] = field(default_factory=dict)
    f1_sum: float = 0.0
    f1_n: int = 0
    instructions: int = 0
    instructions_strict: int = 0
    instructions_loose: int = 0
    plan: PlanCell | None = None
    """Plan measures, when a record of the row has ``meta.score.plan``."""
    given_plan: GivenPlanCell | None = None
    """Given-plan counts, when a record of the row has ``meta.score.given_plan``."""

    def add(self, s: Mapping[str, Any]) -> None:
        self.records += 1
        self.samples += int(s.get("n", 1))
        self.acc_sum += float(s.get("accuracy", 0.0))
        self.acc_strict_sum += float(s.get("accuracy_strict", 0.0))
        self.unextracted += int(s.get("unextracted", 0))
        self.unextracted_strict += int(s.get("unextracted_strict", 0))
        self.timed_out += int(s.get("timed_out", 0))
        self.hedged += int(s.get("hedged", 0))
        self.invalid += int(s.get("invalid", 0))
        for k, v in (s.get("pass@k") or {}).items():
            self.pass_sum[int(k)] = self.pass_sum.get(int(k), 0.0) + float(v)
            self.pass_n[int(k)] = self.pass_n.get(int(k), 0) + 1
        for k, v in (s.get("maj@k") or {}).items():
            self.maj_sum[int(k)] = self.maj_sum.get(int(k), 0) + int(bool(v))
            self.maj_n[int(k)] = self.maj_n.get(int(k), 0) + 1
        if "f1" in s:
            self.f1_sum += float(s["f1"])
            self.f1_n += 1
        self.instructions += int(s.get("instructions", 0))
        self.instructions_strict += int(s.get("instructions_strict", 0))
        self.instructions_loose += int(s.get("instructions_loose", 0))
        if s.get("plan") is not None:
            if self.plan is None:
                self.plan = PlanCell()
            self.plan.add(s["plan"])
        if s.get("given_plan") is not None:
            if self.given_plan is None:
                self.given_plan = GivenPlanCell()
            self.given_plan.add(s["given_plan"])

    @property
    def accuracy(self) -> float:
        return self.acc_sum / self.records if self.records else 0.0

    def summary(self) -> dict[str, Any]:
        lo, hi = wilson(self.acc_sum, self.records)
        slo, shi = wilson(self.acc_strict_sum, self.records)
        out: dict[str, Any] = {
            "n": self.records,
            "samples": self.samples,
            "accuracy": self.accuracy,
            "ci95": [lo, hi],
            "accuracy_strict": self.acc_strict_sum / self.records if self.records else 0.0,
            "ci95_strict": [slo, shi],
            "unextracted": self.unextracted,
            "unextracted_strict": self.unextracted_strict,
            "timed_out": self.timed_out,
            "hedged": self.hedged,
            "invalid": self.invalid,
        }
        # pass@k / maj@k only where every record has that many samples (else the mean mixes k's).
        full = {
            k: self.pass_sum[k] / self.pass_n[k]
            for k in sorted(self.pass_sum)
            if self.pass_n[k] == self.records
        }
        if full:
            out["pass@k"] = {str(k): v for k, v in full.items()}
        maj = {
            k: self.maj_sum[k] / self.maj_n[k] for k in sorted(self.maj_sum) if self.maj_n[k] == self.records
        }
        if maj:
            out["maj@k"] = {str(k): v for k, v in maj.items()}
        if self.f1_n:
            out["f1"] = self.f1_sum / self.f1_n
        if self.instructions:
            out["instruction_accuracy_strict"] = self.instructions_strict / self.instructions
            out["instruction_accuracy_loose"] = self.instructions_loose / self.instructions
        if self.plan is not None:
            out["plan"] = self.plan.summary()
        if self.given_plan is not None:
            out["given_plan"] = self.given_plan.summary()
        return out


@dataclass
class TaskRows:
    cell: Cell = field(default_factory=Cell)
    group: str | None = None
    difficulty: str | None = None
    subtasks: dict[str, dict[str, Cell]] = field(default_factory=dict)
    # id -> (accuracy, n samples), for paired tests between runs.
    per_record: dict[str, tuple[float, int]] = field(default_factory=dict)


# The fields of ``meta.score`` a report reads and the JSON types they may have (or be absent/null).
_NUMBER, _INTEGER = (int, float), (int,)
_SCORE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "task": ((str,), "a string"),
    "group": ((str,), "a string"),
    "difficulty": ((str,), "a string"),
    "subtasks": ((dict,), "an object"),
    "n": (_INTEGER, "an integer"),
    "accuracy": (_NUMBER, "a number"),
    "accuracy_strict": (_NUMBER, "a number"),
    "unextracted": (_INTEGER, "an integer"),
    "unextracted_strict": (_INTEGER, "an integer"),
    "timed_out": (_INTEGER, "an integer"),
    "hedged": (_INTEGER, "an integer"),
    "invalid": (_INTEGER, "an integer"),
    "pass@k": ((dict,), "an object"),
    "maj@k": ((dict,), "an object"),
    "f1": (_NUMBER, "a number"),
    "instructions": (_INTEGER, "an integer"),
    "instructions_strict": (_INTEGER, "an integer"),
    "instructions_loose": (_INTEGER, "an integer"),
    "plan": ((dict,), "an object"),
    "given_plan": ((dict,), "an object"),
}
# meta.score.plan.samples[j]: the fields a report reads and their types (or null).
_PLAN_SAMPLE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "follows": ((bool,), "a boolean"),
    "exact": ((bool,), "a boolean"),
    "exact_no_comments": ((bool,), "a boolean"),
    "literal_precision": (_NUMBER, "a number"),
    "literal_recall": (_NUMBER, "a number"),
}


def score_type_error(score: Mapping) -> str | None:
    """Why ``meta.score`` (a scored record read back, e.g. a run given to ``--compare``) cannot be
    reported: the first field of the wrong type, named with its type; None when it can."""
    from codeplan_tools.core.records import json_type

    for key, (types, expected) in _SCORE_FIELDS.items():
        value = score.get(key)
        if value is not None and type(value) not in types:
            return f"meta.score.{key} is {json_type(value)}, not {expected}"
    for key in ("pass@k", "maj@k"):
        for k, value in (score.get(key) or {}).items():
            if not k.isdigit() or type(value) not in (int, float, bool):
                return f"meta.score.{key} must map k (digits) to numbers, not {k!r}: {json_type(value)}"
    samples = (score.get("plan") or {}).get("samples")
    if samples is not None and type(samples) is not list:
        return f"meta.score.plan.samples is {json_type(samples)}, not a list"
    for j, sample in enumerate(samples or ()):
        if sample is not None and type(sample) is not dict:
            return f"meta.score.plan.samples[{j}] is {json_type(sample)}, not an object"
        for key, (types, expected) in _PLAN_SAMPLE_FIELDS.items():
            value = (sample or {}).get(key)
            if value is not None and type(value) not in types:
                return f"meta.score.plan.samples[{j}].{key} is {json_type(value)}, not {expected}"
    verdicts = (score.get("given_plan") or {}).get("samples")
    if verdicts is not None and type(verdicts) is not list:
        return f"meta.score.given_plan.samples is {json_type(verdicts)}, not a list"
    for j, verdict in enumerate(verdicts or ()):
        if verdict not in _GIVEN_PLAN_VERDICTS:
            return f"meta.score.given_plan.samples[{j}] is {verdict!r}, not one of {', '.join(_GIVEN_PLAN_VERDICTS)}"
    return None


@dataclass
class RunReport:
    name: str
    tasks: dict[str, TaskRows] = field(default_factory=dict)
    unscored: int = 0

    def add(self, record: Mapping) -> None:
        """Add a record by its ``meta.score`` (counted as unscored without one)."""
        s = ((record.get("meta") or {}).get("score")) if isinstance(record.get("meta"), dict) else None
        self.add_score(record.get("id"), s)

    def add_score(self, record_id: Any, s: Any) -> None:
        """Add the ``meta.score`` of the record ``record_id``."""
        if not isinstance(s, Mapping) or "task" not in s:
            self.unscored += 1
            return
        rows = self.tasks.setdefault(s["task"], TaskRows())
        rows.cell.add(s)
        rows.group = s.get("group") or rows.group
        rows.difficulty = s.get("difficulty") or rows.difficulty
        for dim, value in (s.get("subtasks") or {}).items():
            rows.subtasks.setdefault(dim, {}).setdefault(str(value), Cell()).add(s)
        rows.per_record[str(record_id)] = (float(s.get("accuracy", 0.0)), int(s.get("n", 1)))

    def plans(self) -> PlanCell | None:
        """The plan measures of the whole run (None when no record had ``meta.score.plan``)."""
        total: PlanCell | None = None
        for rows in self.tasks.values():
            if rows.cell.plan is not None:
                total = total or PlanCell()
                total.merge(rows.cell.plan)
        return total

    def given_plan(self) -> GivenPlanCell | None:
        """The given-plan counts of the whole run (None when no record had ``meta.score.given_plan``)."""
        total: GivenPlanCell | None = None
        for rows in self.tasks.values():
            if rows.cell.given_plan is not None:
                total = total or GivenPlanCell()
                total.merge(rows.cell.given_plan)
        return total

    def groups(self) -> dict[str, Cell]:
        out: dict[str, Cell] = {}
        for name in sorted(self.tasks):
            rows = self.tasks[name]
            if rows.group:
                out.setdefault(rows.group, Cell())
                _merge(out[rows.group], rows.cell)
        return out

    def benchmarks(self) -> list[str]:
        """Units of the average: tasks, with the tasks of a suite (``SUITES``: BBH) as one unit."""
        seen: list[str] = []
        for name in sorted(self.tasks):
            group = self.tasks[name].group
            unit = group if group in SUITES else name
            if unit not in seen:
                seen.append(unit)
        return seen

    def paired(self, unit: str) -> dict[tuple[str, str], tuple[float, int]]:
        out = {}
        for name, rows in self.tasks.items():
            if name == unit or rows.group == unit:
                for rid, v in rows.per_record.items():
                    out[(name, rid)] = v
        return out

    def accuracy(self, unit: str) -> Cell | None:
        if unit in self.tasks:
            return self.tasks[unit].cell
        return self.groups().get(unit)

    def to_dict(self) -> dict[str, Any]:
        tasks = {}
        for name in sorted(self.tasks):
            rows = self.tasks[name]
            d = rows.cell.summary()
            if rows.group:
                d["group"] = rows.group
            if rows.difficulty:
                d["difficulty"] = rows.difficulty
            if rows.subtasks:
                d["subtasks"] = {
                    dim: {v: c.summary() for v, c in sorted(vals.items(), key=lambda kv: _sort_key(kv[0]))}
                    for dim, vals in sorted(rows.subtasks.items())
                }
            tasks[name] = d
        out: dict[str, Any] = {"name": self.name, "tasks": tasks}
        groups = self.groups()
        if groups:
            out["groups"] = {g: c.summary() for g, c in groups.items()}
        if self.unscored:
            out["unscored_records"] = self.unscored
        plans = self.plans()
        if plans is not None:
            out["plan"] = plans.summary()
        given = self.given_plan()
        if given is not None:
            out["given_plan"] = given.summary()
        return out


def _merge(into: Cell, other: Cell) -> None:
    for f in (
        "records",
        "samples",
        "acc_sum",
        "acc_strict_sum",
        "unextracted",
        "unextracted_strict",
        "timed_out",
        "hedged",
        "invalid",
        "f1_sum",
        "f1_n",
        "instructions",
        "instructions_strict",
        "instructions_loose",
    ):
        setattr(into, f, getattr(into, f) + getattr(other, f))
    for name in ("pass_sum", "pass_n", "maj_sum", "maj_n"):
        mine, theirs = getattr(into, name), getattr(other, name)
        for k, v in theirs.items():
            mine[k] = mine.get(k, 0) + v
    if other.plan is not None:
        if into.plan is None:
            into.plan = PlanCell()
        into.plan.merge(other.plan)
    if other.given_plan is not None:
        if into.given_plan is None:
            into.given_plan = GivenPlanCell()
        into.given_plan.merge(other.given_plan)


def _sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def build_report(records: Iterable[Mapping], name: str = "run") -> RunReport:
    report = RunReport(name)
    for r in records:
        report.add(r)
    return report


# ---------------------------------------------------------------------------------------------
# Comparing runs.


@dataclass
class PairedTest:
    """A paired test of one run against the baseline on the records both scored (paired by task and
    id): McNemar's exact test when every record has one sample, else a paired bootstrap."""

    method: str | None  # "mcnemar", "bootstrap", or None when no record is in both runs
    n_paired: int
    p: float | None
    b: int | None = None  # McNemar: records only the baseline got right
    c: int | None = None  # McNemar: records only this run got right

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "n_paired": self.n_paired}
        if self.method == "mcnemar":
            out.update(b=self.b, c=self.c)
        out["p"] = self.p
        return out


@dataclass
class ComparisonRow:
    """One benchmark (or task) of a comparison; every mapping is keyed by run name."""

    task: str
    n: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, list[float]] = field(default_factory=dict)
    # Against the baseline (other runs only): points, (B - A) / A (None when A is 0), the paired test.
    absolute: dict[str, float] = field(default_factory=dict)
    relative: dict[str, float | None] = field(default_factory=dict)
    test: dict[str, PairedTest] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci95": self.ci95,
            "abs": self.absolute,
            "rel": self.relative,
            "test": {name: test.to_dict() for name, test in self.test.items()},
        }


@dataclass
class Average:
    """One run's average improvement over the baseline across the rows that have a relative one."""

    relative: float | None
    absolute: float
    over: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "average_relative_improvement": self.relative,
            "average_absolute_improvement": self.absolute,
            "over": self.over,
        }


@dataclass
class Comparison:
    """Runs side by side against the first (the baseline): what ``score --compare`` reports."""

    runs: list[RunReport]
    average_over: str
    rows: list[ComparisonRow]
    averages: dict[str, Average]  # by run name, every run but the baseline

    @property
    def baseline(self) -> str:
        return self.runs[0].name

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "runs": self.names,
            "average_over": self.average_over,
            "rows": [row.to_dict() for row in self.rows],
            "averages": {name: average.to_dict() for name, average in self.averages.items()},
        }


def compare(runs: Sequence[RunReport], average_over: str = "benchmarks") -> Comparison:
    """Side-by-side rows against ``runs[0]`` (see the module docstring)."""
    if len(runs) < 2:
        raise ValueError("a comparison needs at least two runs")
    base = runs[0]
    rows = []
    for unit in _units(runs, average_over):
        row = ComparisonRow(unit)
        a_cell = base.accuracy(unit)
        for run in runs:
            cell = run.accuracy(unit)
            if cell is None:
                continue
            row.n[run.name] = cell.records
            row.accuracy[run.name] = cell.accuracy
            row.ci95[run.name] = list(wilson(cell.acc_sum, cell.records))
            if run is base or a_cell is None:
                continue
            row.absolute[run.name] = (cell.accuracy - a_cell.accuracy) * 100
            row.relative[run.name] = (
                (cell.accuracy - a_cell.accuracy) / a_cell.accuracy if a_cell.accuracy > 0 else None
            )
            row.test[run.name] = paired_test(base.paired(unit), run.paired(unit))
        rows.append(row)
    averages = {}
    for run in runs[1:]:
        rels = [rel for r in rows if (rel := r.relative.get(run.name)) is not None]
        with_abs = [r.absolute[run.name] for r in rows if run.name in r.absolute]
        averages[run.name] = Average(
            relative=sum(rels) / len(rels) if rels else None,
            absolute=sum(with_abs) / max(1, len(with_abs)),
            over=[r.task for r in rows if r.relative.get(run.name) is not None],
        )
    return Comparison(list(runs), average_over, rows, averages)


def _units(runs: Sequence[RunReport], average_over: str) -> list[str]:
    if average_over not in ("benchmarks", "tasks"):
        raise ValueError("average_over must be 'benchmarks' or 'tasks'")
    units: list[str] = []
    for run in runs:
        names = sorted(run.tasks) if average_over == "tasks" else run.benchmarks()
        for u in names:
            if u not in units:
                units.append(u)
    return units


def paired_test(
    a: Mapping[tuple[str, str], tuple[float, int]], b: Mapping[tuple[str, str], tuple[float, int]]
) -> PairedTest:
    """McNemar (one sample per record) or paired bootstrap over the records both runs scored."""
    common = sorted(set(a) & set(b))
    if not common:
        return PairedTest(None, 0, None)
    xa = [a[k][0] for k in common]
    xb = [b[k][0] for k in common]
    binary = all(a[k][1] == 1 and b[k][1] == 1 for k in common)
    if binary:
        b_only = sum(1 for x, y in zip(xa, xb, strict=True) if x >= 0.5 > y)
        c_only = sum(1 for x, y in zip(xa, xb, strict=True) if y >= 0.5 > x)
        return PairedTest("mcnemar", len(common), mcnemar_exact(b_only, c_only), b=b_only, c=c_only)
    return PairedTest("bootstrap", len(common), paired_bootstrap(xa, xb))


# ---------------------------------------------------------------------------------------------
# Writers.


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _points(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def _relative(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


# The tables below are built once as values (``_Table``) and rendered twice: ``_text`` for stderr and
# ``_markdown_table`` for ``--report FILE.md``. ``markdown=True`` picks the few values the two show
# differently (the interval's brackets, the test's name beside p, a missing n).


@dataclass
class _Column:
    text: str  # the stderr head (short)
    markdown: str  # the Markdown head (spelt out)
    width: int  # stderr width: the first column is left-aligned and cut to it, the others right-aligned


@dataclass
class _Table:
    columns: list[_Column]
    rows: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (label, depth, values)


def _text(table: _Table) -> list[str]:
    first, others = table.columns[0], table.columns[1:]

    def line(label: str, values: Sequence[str]) -> str:
        cells = "".join(f" {v:>{c.width}}" for v, c in zip(values, others, strict=True))
        return f"{label:<{first.width}.{first.width}}" + cells

    head = line(first.text, [c.text for c in others])
    return [head, *(line("  " * depth + label, values) for label, depth, values in table.rows)]


def _markdown_table(table: _Table) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    head = [line([c.markdown for c in table.columns]), "|" + "---|" * len(table.columns)]
    return head + [line(["&nbsp;&nbsp;" * depth + label, *values]) for label, depth, values in table.rows]


def _rows_of(report: RunReport) -> list[tuple[str, Cell, int]]:
    """(label, cell, depth) in display order: tasks, their subtasks indented, group rows."""
    out = []
    groups = report.groups()
    done_groups: set[str] = set()
    for name in sorted(report.tasks):
        rows = report.tasks[name]
        if rows.group and rows.group not in done_groups and rows.group in groups:
            out.append((f"{rows.group} (all)", groups[rows.group], 0))
            done_groups.add(rows.group)
        out.append((name, rows.cell, 1 if rows.group else 0))
        for dim, vals in sorted(rows.subtasks.items()):
            for value, cell in sorted(vals.items(), key=lambda kv: _sort_key(kv[0])):
                out.append((f"{dim}={value}", cell, 2 if rows.group else 1))
    return out


def _full_ks(report: RunReport) -> list[int]:
    """The k of pass@k that some task has for every one of its records."""
    return sorted(
        {
            k
            for rows in report.tasks.values()
            for k in rows.cell.pass_sum
            if rows.cell.pass_n[k] == rows.cell.records
        }
    )


_RUN_COLUMNS = [
    _Column("task", "task", 48),
    _Column("n", "n", 6),
    _Column("acc%", "accuracy %", 6),
    _Column("95% CI", "95% CI", 13),
    _Column("strict%", "strict %", 7),
    _Column("unextr", "unextracted", 6),
    _Column("hedged", "hedged", 6),
    _Column("invalid", "invalid", 7),
    _Column("timeout", "timed out", 7),
]


def _run_table(report: RunReport, markdown: bool) -> _Table:
    """One run's accuracy table: a row per task, subtask value and group; pass@k and maj@k columns for
    the k every record of some task has."""
    ks = _full_ks(report)
    majs = [k for k in ks if k > 1]
    table = _Table(
        _RUN_COLUMNS
        + [_Column(f"pass@{k}", f"pass@{k}", 7) for k in ks]
        + [_Column(f"maj@{k}", f"maj@{k}", 6) for k in majs]
    )
    interval = "{}–{}" if markdown else "[{}, {}]"
    for label, cell, depth in _rows_of(report):
        s = cell.summary()
        lo, hi = s["ci95"]
        values = [str(cell.records), _pct(s["accuracy"]), interval.format(_pct(lo), _pct(hi))]
        values += [_pct(s["accuracy_strict"]), str(cell.unextracted), str(cell.hedged), str(cell.invalid)]
        values.append(str(cell.timed_out))
        values += [_pct(s.get("pass@k", {}).get(str(k))) for k in ks]
        values += [_pct(s.get("maj@k", {}).get(str(k))) for k in majs]
        table.rows.append((label, depth, values))
    return table


_PLAN_COLUMNS = [
    _Column("plans", "task", 48),
    _Column("compared", "plans compared", 8),
    _Column("exact%", "exact %", 8),
    _Column("nocomm%", "exact, comments ignored %", 8),
    _Column("litP%", "literal precision %", 8),
    _Column("litR%", "literal recall %", 8),
    _Column("follow%", "plan-following %", 8),
    _Column("known", "following known", 8),
]


def _plan_table(report: RunReport) -> _Table:
    """Fidelity to the reference plan and plan-following, for the rows of ``_rows_of`` that have them."""
    table = _Table(_PLAN_COLUMNS)
    for label, cell, depth in _rows_of(report):
        if (plan := cell.plan) is not None:
            s = plan.summary()
            values = [str(plan.compared), _pct(s.get("exact")), _pct(s.get("exact_no_comments"))]
            values += [_pct(s.get("literal_precision")), _pct(s.get("literal_recall")), _pct(plan.following)]
            values.append(str(plan.following_n))
            table.rows.append((label, depth, values))
    return table


_GIVEN_PLAN_COLUMNS = [
    _Column("given plans", "run / task", 48),
    _Column("n", "counterfactual samples", 8),
    _Column("plan%", "follows the plan %", 8),
    _Column("prompt%", "follows the prompt %", 8),
    _Column("neither%", "neither %", 8),
    _Column("same", "plan gives the answer", 8),
]


def _given_plan_table(runs: Sequence[RunReport]) -> _Table | None:
    """Given plans: a row per run, with its tasks, subtasks and groups under it (``_rows_of``) that had
    a ``plan_answer``; None when no record of any run had one."""
    table = _Table(_GIVEN_PLAN_COLUMNS)
    for run in runs:
        total = run.given_plan()
        if total is None:
            continue
        rows = [(run.name, total, 0)]
        rows += [(label, g, depth + 1) for label, cell, depth in _rows_of(run) if (g := cell.given_plan)]
        for label, given, depth in rows:
            s = given.summary()
            values = [str(given.n), _pct(s["plan"]), _pct(s["prompt"]), _pct(s["neither"]), str(given.same)]
            table.rows.append((label, depth, values))
    return table if table.rows else None


_GIVEN_PLAN_LEGEND = (
    "(n: samples of records whose plan_answer is not the answer; plan/prompt: the sample's answer is the "
    "given plan's / the prompt's; same: samples of records whose plan gives the answer, left out)"
)
_GIVEN_PLAN_LEGEND_MARKDOWN = (
    "Over the samples of records given a changed plan whose answer (plan_answer) is not the prompt's: "
    "the share whose answer is the plan's (follows the plan), the prompt's true answer (follows the "
    "prompt) or neither. Samples of records whose plan still gives the true answer are left out and "
    "counted in the last column."
)


def _comparison_table(cmp: Comparison, markdown: bool) -> _Table:
    """A row per benchmark: n, each run's accuracy, and every other run against the baseline (points,
    relative improvement, the paired test's p). Stderr cuts run names to fit; a Markdown n is blank
    where the baseline lacks the benchmark (stderr shows the largest n) and p names its test."""
    runs, base = cmp.names, cmp.baseline
    others = runs[1:]
    columns = [_Column("task", "task", 36), _Column("n", "n", 6)]
    columns += [_Column(r[:12], r, 12) for r in runs]
    for r in others:
        columns += [_Column(f"abs {r[:8]}", f"abs {r}", 13), _Column(f"rel {r[:8]}", f"rel {r}", 13)]
        columns.append(_Column("p", f"p ({r})", 8))
    table = _Table(columns)
    for row in cmp.rows:
        n = row.n.get(base, "" if markdown else max(row.n.values(), default=0))
        values = [str(n)] + [_pct(row.accuracy.get(r)) for r in runs]
        for r in others:
            test = row.test.get(r)
            p = "-"
            if test is not None and test.p is not None:
                p = f"{test.p:.3g} ({test.method})" if markdown else f"{test.p:.3g}"
            values += [_points(row.absolute.get(r)), _relative(row.relative.get(r)), p]
        table.rows.append((row.task, 0, values))
    return table


_PLAN_LEGEND = (
    "(exact: equal to the reference plan, whitespace normalised; nocomm: comments ignored too; litP/litR: "
    "precision/recall of its value literals; follow: the answer equals the value the sample's plan prints)"
)
_PLAN_LEGEND_MARKDOWN = (
    "Exact: the sample's plan equals the reference plan (whitespace normalised; comments and blank "
    "lines also ignored in the next column); literal precision/recall: of its numbers, strings and "
    "booleans against the reference's. Plan-following: the sample's answer equals the value its "
    "own plan prints, over the samples where that value is computable without running the plan."
)


def _following_line(name: str, plan: PlanCell) -> str:
    return (
        f"plan-following of {name}: {_pct(plan.following)}% of {plan.following_n} samples whose plan's "
        "printed value is computable"
    )


def format_plans(report: RunReport) -> str | None:
    """The plan table of one run (stderr): fidelity to the reference plan per task and subtask, and
    plan-following; None when no record had plan measures."""
    plans = report.plans()
    if plans is None:
        return None
    return "\n".join([*_text(_plan_table(report)), _PLAN_LEGEND, _following_line(report.name, plans)])


def format_table(report: RunReport) -> str:
    """One run as a text table (stderr)."""
    lines = [f"codeplan score: {report.name}", *_text(_run_table(report, markdown=False))]
    if report.unscored:
        lines.append(f"({report.unscored} records without meta.score were left out)")
    plans = format_plans(report)
    if plans is not None:
        lines.append(plans)
    lines += _given_plan_text([report])
    return "\n".join(lines)


def _given_plan_text(runs: Sequence[RunReport]) -> list[str]:
    table = _given_plan_table(runs)
    return [] if table is None else [*_text(table), _GIVEN_PLAN_LEGEND]


def _given_plan_markdown(runs: Sequence[RunReport], heading: str) -> list[str]:
    table = _given_plan_table(runs)
    if table is None:
        return []
    return [heading, "", *_markdown_table(table), "", _GIVEN_PLAN_LEGEND_MARKDOWN, ""]


def format_comparison(cmp: Comparison) -> str:
    """A comparison as a text table (stderr)."""
    base, others = cmp.baseline, cmp.names[1:]
    lines = [f"codeplan score --compare (baseline: {base})", *_text(_comparison_table(cmp, markdown=False))]
    for r in others:
        avg = cmp.averages[r]
        lines.append(
            f"average relative improvement of {r} over {base}: {_relative(avg.relative)} across "
            f"{len(avg.over)} {cmp.average_over}"
        )
    methods = {test.method for row in cmp.rows for r in others if (test := row.test.get(r)) and test.method}
    if methods:
        lines.append("p: paired test on records in both runs (" + ", ".join(sorted(methods)) + ")")
    for run in cmp.runs:
        plans = run.plans()
        if plans is not None:
            lines.append(_following_line(run.name, plans))
    lines += _given_plan_text(cmp.runs)
    return "\n".join(lines)


def markdown(runs: Sequence[RunReport], comparison: Comparison | None = None) -> str:
    parts = []
    if comparison is not None:
        parts.append(f"## Comparison (baseline: {comparison.baseline})\n")
        parts += _markdown_table(_comparison_table(comparison, markdown=True))
        parts.append("")
        for r in comparison.names[1:]:
            avg = comparison.averages[r]
            parts.append(
                f"Average relative improvement of **{r}** over {comparison.baseline}: "
                f"**{_relative(avg.relative)}** across {len(avg.over)} {comparison.average_over}."
            )
        following = [(run.name, plans) for run in comparison.runs if (plans := run.plans()) is not None]
        if following:
            parts.append("")
            parts.append(
                "Plan-following (the answer equals the value the sample's plan prints): "
                + "; ".join(f"**{name}** {_pct(p.following)}% of {p.following_n}" for name, p in following)
                + "."
            )
        parts.append("")
        parts += _given_plan_markdown(comparison.runs, "### Given plans")
    for run in runs:
        parts.append(f"## {run.name}\n")
        parts += [*_markdown_table(_run_table(run, markdown=True)), ""]
        plans = run.plans()
        if plans is not None:
            parts.append(f"### Plans: {run.name}\n")
            parts += [*_markdown_table(_plan_table(run)), "", _PLAN_LEGEND_MARKDOWN, ""]
            parts += [_following_line(run.name, plans).capitalize() + ".", ""]
        parts += _given_plan_markdown([run], f"### Given plans: {run.name}")
    return "\n".join(parts)


def report_dict(runs: Sequence[RunReport], comparison: Comparison | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": [r.to_dict() for r in runs]}
    if comparison is not None:
        out["comparison"] = comparison.to_dict()
    return out


def write_json(path: str | Path, runs: Sequence[RunReport], comparison: Comparison | None = None) -> None:
    Path(path).write_bytes(orjson.dumps(report_dict(runs, comparison), option=orjson.OPT_INDENT_2) + b"\n")


def write_markdown(path: str | Path, runs: Sequence[RunReport], comparison: Comparison | None = None) -> None:
    Path(path).write_text(markdown(runs, comparison))


REPORT_EXTENSIONS = (".json", ".md")


def write_reports(
    runs: Sequence[RunReport],
    comparison: Comparison | None,
    files: Iterable[str | Path] = (),
    plot: str | Path | None = None,
    average_over: str = "benchmarks",
) -> None:
    """``--report FILE`` (JSON for ``.json``, Markdown for ``.md``) and ``--plot FILE.png``."""
    for path in files:
        if str(path).endswith(".json"):
            write_json(path, runs, comparison)
        else:
            write_markdown(path, runs, comparison)
    if plot:
        plot_runs(runs, plot, average_over)


def plot_runs(runs: Sequence[RunReport], path: str | Path, average_over: str = "benchmarks") -> None:
    """PNG: accuracy per benchmark for every run (95% CI bars), and accuracy per difficulty for tasks with one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = _units(runs, average_over)
    hard = sorted({name for run in runs for name, rows in run.tasks.items() if rows.difficulty})
    panels = 1 + len(hard)
    cols = min(3, panels)
    rows_n = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(max(6.0, 5.0 * cols), 4.0 * rows_n), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs: list[float] = []
        ys: list[float] = []
        err: list[list[float]] = [[], []]
        for j, unit in enumerate(units):
            cell = run.accuracy(unit)
            if cell is None or not cell.records:
                continue
            lo, hi = wilson(cell.acc_sum, cell.records)
            xs.append(j + (i - (len(runs) - 1) / 2) * width)
            ys.append(100 * cell.accuracy)
            err[0].append(max(0.0, 100 * (cell.accuracy - lo)))  # rounding can make these -1e-14
            err[1].append(max(0.0, 100 * (hi - cell.accuracy)))
        ax.bar(xs, ys, width=width, yerr=err, capsize=2, label=run.name)
    ax.set_xticks(range(len(units)))
    ax.set_xticklabels(units, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy per task")
    ax.legend(fontsize=8)
    for p, name in enumerate(hard, start=1):
        ax = axes[p // cols][p % cols]
        for run in runs:
            rows = run.tasks.get(name)
            if rows is None or not rows.difficulty:
                continue
            vals = rows.subtasks.get(rows.difficulty, {})
            keys = sorted(vals, key=_sort_key)
            ax.plot(keys, [100 * vals[k].accuracy for k in keys], marker="o", label=run.name)
        ax.set_title(
            f"{name} by {runs[0].tasks.get(name, TaskRows()).difficulty or 'difficulty'}", fontsize=9
        )
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
    for p in range(panels, rows_n * cols):
        axes[p // cols][p % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
