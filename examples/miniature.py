"""The miniature: can this pipeline detect a plan effect, and does a CodePlan-style plan help a tiny student?

    make miniature                         (about 50 minutes on 2 cores; re-run to resume)
    python examples/miniature.py [--out miniature-out] [--jobs 2] [--seeds 0,1,2] [--smoke]

Every step is a `codeplan` command (synth, init-model, extract, filter, pack, finetune, generate
--given-plan, score); this script only schedules them (``--jobs`` at a time, each step's log in
``<out>/logs/``), skips the steps already done (``<out>/done/``) and writes ``<out>/report.md``,
``report.json`` and three PNGs. Students are tiny Llamas trained from scratch with one token per
character (``init-model --vocab-size 264``), one base per seed; all arms of a seed start from the
same base and take the same optimizer steps.

1. **Positive control** (``synth/add``, 3-digit addition, answer-only responses): ``answer-only``
   (no plan), ``values-plan`` (the plan carries each column's sum and carry), ``random-values`` (the
   same layout with random digits). Intermediate values written down make each step local (Lee et al.
   2023); if the pipeline cannot show this gap, with seeds not overlapping, nothing after it is read
   as a finding.
2. **The CodePlan-style family** (``synth/nest``, e.g. ``Eval: dbl(inc(sqr(3)))``): the plan is
   value-free and lists the operations in execution order (innermost first), which the prompt writes
   the other way round; the response writes the value after each step. Arms: ``vanilla``,
   ``codeplan-gold``, ``codeplan-mined`` (plans from a tiny extractor through ``extract`` +
   ``filter``; its fidelity is reported), ``nlplan`` (a natural-language plan), and two controls of
   the same length: ``other-problem`` (the plan of another problem) and ``filler`` (the plan's
   characters replaced by dots). Training: k = 2..4; test: k = 3..6 (5 and 6 are longer than any
   training chain; k = 2 has only 230 distinct prompts, nearly all in training) and
   compositions held out of training (``--split novel``). Data size: ``vanilla`` and
   ``codeplan-gold`` also at 25% and 50% of the pairs.
3. **Plan-following**: the plan students are given a counterfactual plan at test time
   (``generate --given-plan``: a changed value or operation, or another problem's plan) at three
   checkpoints of training (``finetune --export-every``), and ``score`` counts whether the answer
   follows the plan or the prompt (``meta.score.given_plan``). The oracle (the gold plan given) and
   the students' own-plan fidelity gate the table: a plan cannot help a student that cannot use it.

``--smoke`` runs the same graph at a toy scale (a few optimizer steps, a few records): the test suite
uses it so the script cannot rot; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRACT_TEMPLATE = HERE / "miniature_extract.txt"


@dataclass(frozen=True)
class Scale:
    pc_train: int = 3000  # addition pairs
    pc_test: int = 300
    pc_steps: int = 1000
    nest_train: int = 2000  # the 100% training set; 25% and 50% are its prefixes
    nest_test: int = 300  # k = 3..6, 75 per k (k = 2 has 230 prompts: training holds nearly all)
    nest_novel: int = 90  # held-out compositions, k = 2..4
    nest_steps: int = 600
    extractor_train: int = 2000
    extractor_steps: int = 600
    micro_batch: int = 8
    max_tokens: int = 192  # a plan and its response (the longest: nest at k = 6, ~165 characters)
    response_tokens: int = 64  # a response alone (vanilla, or after a given plan): nest at k = 6, ~50


FULL = Scale()
SMOKE = Scale(
    pc_train=24, pc_test=4, pc_steps=3, nest_train=40, nest_test=5, nest_novel=3, nest_steps=3,
    extractor_train=12, extractor_steps=3, micro_batch=2, max_tokens=48, response_tokens=16,
)  # fmt: skip

PC_ARMS = {  # name: (training data, pack format)
    "answer-only": ("pc-train", "vanilla"),
    "values-plan": ("pc-train", "codeplan"),
    "random-values": ("pc-train-random", "codeplan"),
}
NEST_ARMS = {
    "vanilla": ("nest-train", "vanilla"),
    "codeplan-gold": ("nest-train", "codeplan"),
    "codeplan-mined": ("mined", "codeplan"),
    "nlplan": ("nest-train-nl", "nlplan"),
    "other-problem": ("nest-train-other", "codeplan"),
    "filler": ("nest-train-filler", "codeplan"),
}
FRACTIONS = {"25%": 0.25, "50%": 0.5}  # the data-size series; 100% is the main table
SIZE_ARMS = ("vanilla", "codeplan-gold")
# Students measured at checkpoints with counterfactual plans, and the test sets given to them.
FOLLOWING = {
    "values-plan": {"changed value": "pc-test-cf", "gold plan (oracle)": "pc-test"},
    "codeplan-gold": {
        "changed operation": "nest-test-cf",
        "another problem's plan": "nest-test-other",
        "gold plan (oracle)": "nest-test",
    },
}
CHECKPOINTS = 3
# Arms whose plans are meant to equal the gold code plan (own-plan fidelity is read for these).
CODE_PLANS = ("codeplan-gold", "codeplan-mined")
# The gate: a seed's plan student counts when, given the gold plan, it is within this of vanilla.
GATE_POINTS = 0.05


# --------------------------------------------------------------------------------------- scheduling
@dataclass
class Job:
    name: str
    commands: list[list[str] | tuple[list[str], str]]  # argv, or (argv, file that receives stdout)
    deps: list[str] = field(default_factory=list)
    append: bool = False  # stdout files are appended to (finetune's metrics survive a resume)
    # Checked when the job is ready: a reason to skip it (and every job after it), or None.
    skip_when: Callable[[], str | None] | None = None


class Graph:
    """Jobs with dependencies, run ``jobs`` at a time; a finished job leaves ``done/<name>``."""

    def __init__(self, out: Path, jobs: int) -> None:
        self.out, self.jobs = out, jobs
        self.graph: dict[str, Job] = {}
        (out / "done").mkdir(parents=True, exist_ok=True)
        for folder in ("logs", "packs", "students", "metrics", "gen", "scored"):
            (out / folder).mkdir(exist_ok=True)

    def add(self, name: str, *commands, deps=(), append: bool = False, skip_when=None) -> str:
        self.graph[name] = Job(name, list(commands), list(deps), append, skip_when)
        return name

    def _marker(self, name: str) -> Path:
        return self.out / "done" / name.replace("/", "_")

    def done(self, name: str) -> bool:
        return self._marker(name).exists()

    def skipped(self, name: str) -> str | None:
        """Why the job was skipped, or None when it ran (or has not)."""
        marker = self._marker(name)
        text = marker.read_text() if marker.exists() else ""
        return text.removeprefix("skipped: ").strip() if text.startswith("skipped: ") else None

    def _skip(self, job: Job) -> str | None:
        for dep in job.deps:
            if why := self.skipped(dep):
                return why
        return job.skip_when() if job.skip_when else None

    def _run(self, job: Job) -> None:
        log = self.out / "logs" / (job.name.replace("/", "_") + ".log")
        with open(log, "a") as err:
            for command in job.commands:
                argv, stdout = command if isinstance(command, tuple) else (command, None)
                err.write(f"$ {' '.join(argv)}{' > ' + stdout if stdout else ''}\n")
                err.flush()
                sink = open(self.out / stdout, "ab" if job.append else "wb") if stdout else subprocess.DEVNULL
                try:
                    rc = subprocess.run(argv, cwd=self.out, stdout=sink, stderr=err).returncode
                finally:
                    if stdout:
                        sink.close()
                if rc:
                    raise RuntimeError(f"{job.name}: exit {rc} from `{' '.join(argv[:4])} ...` (see {log})")
        self._marker(job.name).touch()

    def run(self) -> None:
        todo = {n: j for n, j in self.graph.items() if not self.done(n)}
        total, started = len(todo), time.monotonic()
        running: dict[Future, str] = {}
        finished = 0
        print(f"miniature: {total} of {len(self.graph)} steps to run, {self.jobs} at a time", file=sys.stderr)
        with ThreadPoolExecutor(self.jobs) as pool:
            while todo or running:
                ready = [n for n, j in todo.items() if all(self.done(d) for d in j.deps)]
                for name in ready:
                    if why := self._skip(todo[name]):
                        self._marker(name).write_text(f"skipped: {why}\n")
                        print(f"miniature: skipped {name}: {why}", file=sys.stderr)
                        del todo[name]
                        finished += 1
                ready = [n for n in ready if n in todo]
                for name in ready[: self.jobs - len(running)]:
                    running[pool.submit(self._run, todo.pop(name))] = name
                if not todo and not running:
                    break
                if not running:
                    sys.exit(f"miniature: steps wait on steps that never ran: {', '.join(todo)}")
                complete, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in complete:
                    name = running.pop(future)
                    try:
                        future.result()
                    except (RuntimeError, OSError) as e:
                        pool.shutdown(wait=True, cancel_futures=True)
                        sys.exit(f"miniature: {e}; re-run to resume")
                    finished += 1
                    elapsed = time.monotonic() - started
                    print(
                        f"[{time.strftime('%H:%M:%S')}] {finished}/{total} {name} "
                        f"({elapsed / 60:.1f} min so far)",
                        file=sys.stderr,
                    )


# ------------------------------------------------------------------------------------------ the graph
def codeplan(*args: str) -> list[str]:
    return [sys.executable, "-m", "codeplan_cli", *args]


def no_records(path: Path, why: str) -> Callable[[], str | None]:
    """A skip check: ``why`` when ``path`` holds no record (e.g. the filter kept no mined plan)."""

    def check() -> str | None:
        from codeplan_tools.core.streams import read_records

        if not path.exists():
            return why
        return None if next(iter(read_records([str(path)])), None) is not None else why

    return check


def build(graph: Graph, scale: Scale, seeds: list[int]) -> dict[str, dict]:
    """Adds every step; returns what the report reads: {student: {"arm", "seed", "scored": {test: file}}}."""
    s = scale
    synth = lambda *a: codeplan("synth", *a, "-q")  # noqa: E731

    # Data. Test sets exclude every training prompt; the counterfactual sets are the same questions.
    graph.add(
        "data/pc",
        (synth("add", "--n", str(s.pc_train), "--k", "3", "--seed", "1"), "pc-train.jsonl.zst"),
        (synth("add", "--n", str(s.pc_train), "--k", "3", "--seed", "1", "--plan-variant", "random-values"),
         "pc-train-random.jsonl.zst"),
        *[
            (synth("add", "--n", str(s.pc_test), "--k", "3", "--seed", "3", "--exclude", "pc-train.jsonl.zst",
                   "--keep-gold-plan", *variant), f"{name}.jsonl.zst")
            for name, variant in (("pc-test", ()), ("pc-test-cf", ("--plan-variant", "counterfactual")))
        ],
    )  # fmt: skip
    nest = ("nest", "--split", "train", "--seed", "1", "--keep-gold-plan", "--k", "2-4")
    graph.add(
        "data/nest",
        *[
            (synth(*nest, "--n", str(n), *variant), f"{name}.jsonl.zst")
            for name, n, variant in (
                ("nest-train", s.nest_train, ()),
                ("nest-train-nl", s.nest_train, ("--plan-variant", "nl")),
                ("nest-train-other", s.nest_train, ("--plan-variant", "other-problem")),
                ("nest-train-filler", s.nest_train, ("--plan-variant", "filler")),
                *[(f"nest-train-{label[:-1]}", round(s.nest_train * f), ()) for label, f in FRACTIONS.items()],
            )
        ],
        # The extractor's own pairs (another seed): at k = 2 there are only 230 prompts, so its set and
        # the students' overlap there; the test questions exclude the students' training prompts.
        (synth("nest", "--split", "train", "--seed", "5", "--k", "2-4", "--n", str(s.extractor_train)),
         "extractor-gold.jsonl.zst"),
        *[
            (synth("nest", "--split", "train", "--seed", "3", "--k", "3-6", "--n", str(s.nest_test),
                   "--keep-gold-plan", "--exclude", "nest-train.jsonl.zst", *variant), f"{name}.jsonl.zst")
            for name, variant in (
                ("nest-test", ()),
                ("nest-test-cf", ("--plan-variant", "counterfactual")),
                ("nest-test-other", ("--plan-variant", "other-problem")),
            )
        ],
        (synth("nest", "--split", "novel", "--seed", "4", "--k", "2-4", "--n", str(s.nest_novel),
               "--keep-gold-plan"), "nest-novel.jsonl.zst"),
    )  # fmt: skip

    # One base per seed: every arm of a seed starts from the same weights.
    for seed in seeds:
        graph.add(
            f"base/s{seed}",
            codeplan("init-model", f"base-s{seed}", "--corpus", "pc-train.jsonl.zst", "--corpus",
                     "nest-train.jsonl.zst", "--hidden-size", "64", "--layers", "2", "--heads", "2",
                     "--kv-heads", "1", "--head-dim", "32", "--vocab-size", "264", "--seed", str(seed)),
            deps=["data/pc", "data/nest"],
        )  # fmt: skip
    base0 = f"base-s{seeds[0]}"

    # The extractor: a tiny model fine-tuned on (prompt, response) -> gold plan pairs of other problems,
    # then extract + score (fidelity against the kept gold plans) + filter over the training pairs.
    finetune_common = (
        "--lr",
        "3e-3",
        "--micro-batch",
        str(s.micro_batch),
        "--log-every",
        "25",
        "--save-every",
        "100",
    )
    graph.add(
        "extractor",
        ([sys.executable, str(HERE / "extractor_pairs.py"), "--template", str(EXTRACT_TEMPLATE), "-i",
          "extractor-gold.jsonl.zst"], "extractor-pairs.jsonl.zst"),
        codeplan("pack", "-m", base0, "--format", "vanilla", "--max-len", "512", "-q", "-i",
                 "extractor-pairs.jsonl.zst", "-o", "extractor-packs.jsonl.zst"),
        (codeplan("finetune", "-m", base0, "-i", "extractor-packs.jsonl.zst", "-o", "extractor",
                  "--max-steps", str(s.extractor_steps), *finetune_common), "extractor-metrics.jsonl"),
        codeplan("extract", "-m", "extractor", "--engine", "hf", "--template", str(EXTRACT_TEMPLATE),
                 "--max-tokens", "96", "--batch-size", "100", "-q", "-i", "nest-train.jsonl.zst",
                 "-o", "mined-raw.jsonl.zst", "--rejects", "extract-rejects.jsonl.zst"),
        codeplan("score", "-q", "-i", "mined-raw.jsonl.zst", "-o", "mined-scored.jsonl.zst",
                 "--report", "extraction.json"),
        codeplan("filter", "-q", "-i", "mined-raw.jsonl.zst", "--grounded", "--consistent", "--rejects",
                 "filter-rejects.jsonl.zst", "--stats", "filter-stats.json", "-o", "mined.jsonl.zst"),
        deps=[f"base/s{seeds[0]}"], append=True,
    )  # fmt: skip

    students: dict[str, dict] = {}
    arms = [("pc", arm, data, fmt, s.pc_steps) for arm, (data, fmt) in PC_ARMS.items()]
    arms += [("nest", arm, data, fmt, s.nest_steps) for arm, (data, fmt) in NEST_ARMS.items()]
    arms += [
        ("size", f"{arm}@{label}", f"nest-train-{label[:-1]}", NEST_ARMS[arm][1], s.nest_steps)
        for label in FRACTIONS
        for arm in SIZE_ARMS
    ]
    for group, arm, data, fmt, steps in arms:
        pack = f"packs/{arm}.jsonl.zst"
        pack_deps = ["extractor"] if data == "mined" else ["data/pc", "data/nest"]
        graph.add(
            f"pack/{arm}",
            codeplan("pack", "-m", base0, "--format", fmt, "--max-len", "512", "-q", "-i", f"{data}.jsonl.zst",
                     "-o", pack),
            deps=[*pack_deps, f"base/s{seeds[0]}"],
            skip_when=no_records(graph.out / f"{data}.jsonl.zst", f"{data}.jsonl.zst has no records"),
        )  # fmt: skip
        tests = ["pc-test"] if group == "pc" else ["nest-test", "nest-novel"]
        for seed in seeds:
            name = f"{arm}-s{seed}"
            folder = f"students/{name}"
            every = steps // CHECKPOINTS if arm in FOLLOWING else 0
            graph.add(
                f"train/{name}",
                (codeplan("finetune", "-m", f"base-s{seed}", "-i", pack, "-o", folder, "--max-steps", str(steps),
                          "--seed", str(seed), "--export-every", str(every), *finetune_common),
                 f"metrics/{name}.jsonl"),
                deps=[f"pack/{arm}", f"base/s{seed}"], append=True,
            )  # fmt: skip
            scored = {}
            for test in tests:
                gen, out = f"gen/{name}.{test}.jsonl.zst", f"scored/{name}.{test}.jsonl.zst"
                graph.add(
                    f"eval/{name}/{test}",
                    codeplan("generate", "-m", folder, "--format", fmt, "--engine", "hf", "--max-tokens",
                             str(s.max_tokens if fmt != "vanilla" else s.response_tokens), "--batch-size", "100", "-q", "-i", f"{test}.jsonl.zst", "-o", gen),
                    codeplan("score", "-q", "-i", gen, "-o", out),
                    deps=[f"train/{name}"],
                )  # fmt: skip
                scored[test] = out
            following = {}
            for step_index in range(1, CHECKPOINTS + 1) if arm in FOLLOWING else ():
                last = step_index == CHECKPOINTS
                step = steps if last else every * step_index
                model = folder if last else f"{folder}/step-{step:06d}"
                for kind, test in FOLLOWING[arm].items():
                    if kind.startswith("gold") and not last:
                        continue  # the oracle is read once, at the end
                    tag = f"{name}.{test}.given.step{step}"
                    gen, out = f"gen/{tag}.jsonl.zst", f"scored/{tag}.jsonl.zst"
                    graph.add(
                        f"follow/{tag}",
                        codeplan("generate", "-m", model, "--format", fmt, "--engine", "hf", "--given-plan",
                                 "--max-tokens", str(s.response_tokens), "--batch-size", "100", "-q", "-i",
                                 f"{test}.jsonl.zst", "-o", gen),
                        codeplan("score", "-q", "-i", gen, "-o", out),
                        deps=[f"train/{name}"],
                    )  # fmt: skip
                    following[(kind, step)] = out
            students[name] = {
                "group": group, "arm": arm, "seed": seed, "scored": scored, "following": following,
                "metrics": f"metrics/{name}.jsonl",
            }  # fmt: skip
    return students


# --------------------------------------------------------------------------------------------- report
def read_scored(path: Path) -> list[dict]:
    """The scored records, or none when the step was skipped (an arm without training data)."""
    from codeplan_tools.core.streams import read_records

    return list(read_records([str(path)])) if path.exists() else []


def outcomes(records: list[dict]) -> dict[str, dict]:
    """id -> {"correct", "difficulty", "plan_exact", "given"} of one scored file (one sample per record)."""
    result = {}
    for r in records:
        score = r["meta"]["score"]
        plan = (score.get("plan") or {}).get("samples") or [None]
        given = (score.get("given_plan") or {}).get("samples") or [None]
        result[r["id"]] = {
            "correct": bool(score.get("correct")),
            "difficulty": r.get("difficulty"),
            "plan_exact": (plan[0] or {}).get("exact_no_comments"),
            "given": given[0],
        }
    return result


def sign_test(b: int, c: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def spread(values: list[float | None]) -> str:
    """mean (min–max) over seeds, in percent."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return pct(vals[0])
    return f"{pct(mean(vals))} ({pct(min(vals))}–{pct(max(vals))})"


def accuracy(rows: dict[str, dict], keep=lambda row: True) -> float | None:
    sel = [row["correct"] for row in rows.values() if keep(row)]
    return sum(sel) / len(sel) if sel else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def paired(results: dict, arm: str, baseline: str, test: str, seeds: list[int]) -> tuple[int, int, float]:
    """Discordant pairs pooled over seeds (same seed, same question) and the sign test's p."""
    b = c = 0
    for seed in seeds:
        ours, base = results[(arm, seed)][test], results[(baseline, seed)][test]
        for qid, row in ours.items():
            if qid in base:
                b += row["correct"] and not base[qid]["correct"]
                c += base[qid]["correct"] and not row["correct"]
    return b, c, sign_test(b, c)


def report(
    out: Path,
    students: dict[str, dict],
    seeds: list[int],
    scale: Scale,
    wall: float | None,
    skipped: dict[str, str],
) -> None:
    results: dict[tuple[str, int], dict[str, dict]] = {}
    following: dict[tuple[str, int], dict] = {}
    for info in students.values():
        key = (info["arm"], info["seed"])
        results[key] = {test: outcomes(read_scored(out / f)) for test, f in info["scored"].items()}
        following[key] = {k: outcomes(read_scored(out / f)) for k, f in info["following"].items()}

    def by_seed(arm: str, test: str, keep=lambda row: True) -> list[float | None]:
        return [accuracy(results[(arm, seed)][test], keep) for seed in seeds]

    data: dict = {"seeds": seeds, "scale": scale.__dict__, "wall_s": wall}
    md = ["# The miniature: plan effects in tiny students", ""]
    md.append(
        f"Seeds {', '.join(map(str, seeds))}; one token per character; hidden 64 x 2 layers; "
        f"{scale.pc_steps} optimizer steps per positive-control student, {scale.nest_steps} per nest "
        f"student (micro-batch {scale.micro_batch} packs of 512 tokens, lr 3e-3)."
        + (f" Wall time {wall / 60:.1f} min." if wall else "")
    )
    for step, why in skipped.items():
        md.append(f"\n**Not run**: {step.removeprefix('pack/')} ({why}): its cells are empty.")
    data["skipped"] = skipped

    # 1. Positive control.
    pc = {arm: by_seed(arm, "pc-test") for arm in PC_ARMS}
    lo_plan = min((v for v in pc["values-plan"] if v is not None), default=0.0)
    hi_rest = max(
        (v for arm in ("answer-only", "random-values") for v in pc[arm] if v is not None), default=1.0
    )
    shown = lo_plan > hi_rest
    data["positive_control"] = {"accuracy": pc, "gap_shown": shown}
    md += ["", "## 1. Positive control: 3-digit addition (`synth/add`), answer-only responses", ""]
    md.append(
        table(
            ["arm", *[f"seed {s}" for s in seeds], "mean (min–max)"],
            [[arm, *map(pct, vals), spread(vals)] for arm, vals in pc.items()],
        )
    )
    md.append("")
    md.append(
        f"**Gap {'shown' if shown else 'NOT shown'}**: the values plan's worst seed ({pct(lo_plan)}%) "
        f"{'beats' if shown else 'does not beat'} the best seed of the other arms ({pct(hi_rest)}%)."
        + ("" if shown else " Nothing below is read as a finding.")
    )

    # 2. The nest family.
    md += ["", "## 2. CodePlan-style plans: nested functions (`synth/nest`), 100% of the pairs", ""]
    ks = sorted(
        {row["difficulty"] for seed in seeds for row in results[("vanilla", seed)]["nest-test"].values()}
    )
    header = [
        "arm",
        "all k",
        *[f"k={k}" for k in ks],
        "novel compositions",
        "own plan = gold",
        "vs vanilla: b/c, p",
    ]
    rows, nest_json = [], {}
    for arm in NEST_ARMS:
        overall = by_seed(arm, "nest-test")
        per_k = {k: by_seed(arm, "nest-test", lambda row, k=k: row["difficulty"] == k) for k in ks}
        novel = by_seed(arm, "nest-novel")
        fidelity = [
            mean(row["plan_exact"] for row in results[(arm, seed)]["nest-test"].values())
            if arm in CODE_PLANS
            else None
            for seed in seeds
        ]
        if arm == "vanilla":
            test_cell, test = "-", None
        else:
            b, c, p = paired(results, arm, "vanilla", "nest-test", seeds)
            test_cell, test = f"{b}/{c}, p={p:.2g}", {"b": b, "c": c, "p": p}
        rows.append(
            [
                arm,
                spread(overall),
                *[spread(per_k[k]) for k in ks],
                spread(novel),
                spread(fidelity),
                test_cell,
            ]
        )
        nest_json[arm] = {
            "accuracy": overall, "per_k": {str(k): v for k, v in per_k.items()}, "novel": novel,
            "own_plan_exact": fidelity, "paired_vs_vanilla": test,
        }  # fmt: skip
    md.append(table(header, rows))
    md.append("")
    md.append(
        "k > 4 is longer than any training chain. b/c: questions (pooled over seeds) the arm gets right and "
        "vanilla wrong / the reverse; p: two-sided exact sign test. Own plan = gold: the student's plan "
        "equals the test question's gold plan (comments ignored)."
    )
    data["nest"] = nest_json
    # The gate: per seed, can the gold-plan student use the gold plan when it is given (the oracle)?
    last = scale.nest_steps
    oracle = [
        accuracy(following[("codeplan-gold", seed)].get(("gold plan (oracle)", last), {})) for seed in seeds
    ]
    vanilla = nest_json["vanilla"]["accuracy"]
    passed = [
        o is not None and v is not None and o >= v - GATE_POINTS for o, v in zip(oracle, vanilla, strict=True)
    ]
    data["gate"] = {"oracle": oracle, "vanilla": vanilla, "passed": passed}
    md.append("")
    md.append(
        f"**Gate**: given the gold plan, codeplan-gold scores {', '.join(map(pct, oracle))}% "
        f"(seeds {', '.join(map(str, seeds))}; vanilla {', '.join(map(pct, vanilla))}%): it can use a gold "
        f"plan on {sum(passed)} of {len(seeds)} seeds (within {100 * GATE_POINTS:.0f} points of vanilla). "
        "A seed that fails the gate says nothing about what a plan could give."
    )
    extraction = _extraction(out)
    data["extraction"] = extraction
    if extraction:
        md.append("")
        md.append(
            f"Mined plans: the extractor's plan equals the gold plan on {pct(extraction['exact'])}% of "
            f"{extraction['compared']} training pairs; `filter --grounded --consistent` kept "
            f"{extraction['kept']} of {extraction['read']}."
        )

    # 3. Plan-following.
    md += ["", "## 3. Given plans at checkpoints (`generate --given-plan`)", ""]
    rows, follow_json = [], []
    for arm, tests in FOLLOWING.items():
        steps = sorted({step for seed in seeds for (_, step) in following[(arm, seed)]})
        for kind in tests:
            for step in steps:
                per_seed = [following[(arm, seed)].get((kind, step), {}) for seed in seeds]
                if kind.startswith("gold"):
                    if not any(per_seed):
                        continue  # the oracle is read at the last checkpoint only
                    acc = [accuracy(r) if r else None for r in per_seed]
                    rows.append([arm, kind, str(step), spread(acc), "-", "-"])
                    follow_json.append({"arm": arm, "kind": kind, "step": step, "accuracy": acc})
                    continue
                plan_rate, prompt_rate = [], []
                for r in per_seed:
                    given = [
                        row["given"] for row in r.values() if row["given"] in ("plan", "prompt", "neither")
                    ]
                    plan_rate.append(given.count("plan") / len(given) if given else None)
                    prompt_rate.append(given.count("prompt") / len(given) if given else None)
                rows.append([arm, kind, str(step), "-", spread(plan_rate), spread(prompt_rate)])
                follow_json.append(
                    {
                        "arm": arm,
                        "kind": kind,
                        "step": step,
                        "follows_plan": plan_rate,
                        "follows_prompt": prompt_rate,
                    }
                )
    md.append(
        table(["student", "plan given", "step", "accuracy", "follows the plan", "follows the prompt"], rows)
    )
    md.append("")
    md.append(
        "Counterfactual plans change one value or operation (or are another problem's plan) so that following "
        "the plan gives another answer than the prompt; questions where both agree are left out."
    )
    data["following"] = follow_json

    # 4. Data size.
    md += ["", "## 4. Data size (the paper's data-efficiency claim), `synth/nest`", ""]
    rows, size_json, size_by_k = [], {}, {}
    for label, fraction in [*FRACTIONS.items(), ("100%", 1.0)]:
        n = round(scale.nest_train * fraction)
        for arm in SIZE_ARMS:
            name = arm if fraction == 1.0 else f"{arm}@{label}"
            vals = by_seed(name, "nest-test")
            per_k = {k: by_seed(name, "nest-test", lambda row, k=k: row["difficulty"] == k) for k in ks}
            novel = by_seed(name, "nest-novel")
            size_json.setdefault(arm, {})[label] = vals
            size_by_k.setdefault(arm, {})[label] = {
                "per_k": {str(k): v for k, v in per_k.items()},
                "novel": novel,
            }
            rows.append([label, str(n), arm, spread(vals), *[spread(per_k[k]) for k in ks], spread(novel)])
    md.append(table(["pairs", "n", "arm", "all k", *[f"k={k}" for k in ks], "novel compositions"], rows))
    data["data_size"] = size_json
    data["data_size_by_difficulty"] = size_by_k

    md += [
        "",
        "## Reading the tables",
        "",
        "- A plan effect: the plan arm beats vanilla (paired p small), both same-length controls do not, and "
        "the students follow counterfactual plans (high 'follows the plan').",
        "- Extra tokens: other-problem or filler gain as much as the plan arm.",
        "- Read but redundant: students follow given plans, yet do not beat vanilla.",
        "- Not read: 'follows the plan' near chance (about 10% for one digit) while the oracle is high.",
        "- Nothing: the gate fails (the student cannot use even the gold plan) or the positive control shows "
        "no gap.",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![following](following.png)",
        "",
        "![losses](losses.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    _plots(out, students, data, seeds)
    print(f"miniature: wrote {out / 'report.md'}", file=sys.stderr)


def _extraction(out: Path) -> dict | None:
    try:
        ext = json.loads((out / "extraction.json").read_text())
        stats = json.loads((out / "filter-stats.json").read_text())
    except (OSError, ValueError):
        return None
    plan = ext["runs"][0].get("plan") or {}
    counters = stats.get("counters") or stats
    return {
        "compared": plan.get("compared"),
        "exact": plan.get("exact_no_comments"),
        "read": counters.get("read"),
        "kept": counters.get("written", counters.get("kept")),
    }


def _plots(out: Path, students: dict[str, dict], data: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(HERE))
    from plot_losses import read_curve

    # Accuracy per arm with min–max over seeds, both experiments side by side.
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 6, 3]})
    for ax, (title, series) in zip(
        axes[:2],
        (
            ("positive control (add)", data["positive_control"]["accuracy"]),
            ("nest, 100% of pairs", {arm: v["accuracy"] for arm, v in data["nest"].items()}),
        ),
        strict=True,
    ):
        names = list(series)
        means = [100 * (mean(series[n]) or 0) for n in names]
        lows = [
            m - 100 * min((v for v in series[n] if v is not None), default=0)
            for m, n in zip(means, names, strict=True)
        ]
        highs = [
            100 * max((v for v in series[n] if v is not None), default=0) - m
            for m, n in zip(means, names, strict=True)
        ]
        ax.bar(names, means, yerr=[lows, highs], capsize=4, color="tab:blue")
        ax.set_title(title)
        ax.set_ylabel("test accuracy % (mean, min–max over seeds)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30)
    ax = axes[2]
    for arm, by_label in data["data_size"].items():
        labels = list(by_label)
        ax.plot(labels, [100 * (mean(v) or 0) for v in by_label.values()], marker="o", label=arm)
    ax.set_title("nest: data size")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    # Plan-following over checkpoints.
    fig, ax = plt.subplots(figsize=(7, 4))
    lines = defaultdict(list)
    for row in data["following"]:
        if "follows_plan" in row:
            lines[f"{row['arm']}: {row['kind']}"].append(
                (row["step"], 100 * (mean(row["follows_plan"]) or 0))
            )
    for label, points in lines.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answers that follow the given plan %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "following.png", dpi=110)
    plt.close(fig)

    # Loss curves: one line per arm (seed 0's run).
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for info in students.values():
        if info["seed"] != seeds[0] or info["group"] == "size" or not (out / info["metrics"]).exists():
            continue
        steps, losses = read_curve(str(out / info["metrics"]))
        last = dict(zip(steps, losses, strict=True))  # a resumed run logs some steps twice: keep the last
        ax = axes[0 if info["group"] == "pc" else 1]
        ax.plot(list(last), list(last.values()), label=info["arm"])
    for ax, title in zip(axes, ("positive control", "nest"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"training loss, {title} (seed {seeds[0]})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("MINIATURE_OUT", "miniature-out"))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MINIATURE_JOBS", "2")))
    parser.add_argument("--seeds", default=os.environ.get("MINIATURE_SEEDS", "0,1,2"))
    parser.add_argument(
        "--smoke", action="store_true", help="a toy scale (for tests): the numbers mean nothing"
    )
    args = parser.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"miniature: --seeds takes comma-separated integers, not {args.seeds!r}")
    if args.jobs < 1:
        sys.exit("miniature: --jobs must be >= 1")
    out = Path(args.out).resolve()
    scale = SMOKE if args.smoke else FULL
    graph = Graph(out, args.jobs)
    students = build(graph, scale, seeds)
    started = time.monotonic()
    wall_file = out / "wall_s"
    graph.run()
    # The wall time of all runs together (a resumed run adds to the earlier ones).
    wall = time.monotonic() - started + (float(wall_file.read_text()) if wall_file.exists() else 0.0)
    wall_file.write_text(f"{wall:.0f}\n")
    skipped = {n: why for n in graph.graph if n.startswith("pack/") and (why := graph.skipped(n))}
    report(out, students, seeds, scale, wall, skipped)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per step: --jobs steps share the cores
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
