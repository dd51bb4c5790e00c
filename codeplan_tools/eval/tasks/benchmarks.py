"""The built-in benchmarks: GSM8K, MATH, MATH-500, SVAMP, MultiArith, AddSub, SingleEq, AQuA,
CommonsenseQA, StrategyQA, date understanding, shuffled objects, coin flip, Last Letter, the 27 BBH
tasks, IFEval, HotpotQA, MuSiQue, 2WikiMultihopQA and Bamboogle.

Each task reads the converted file under the data folder (``../shared/data``, see its MANIFEST) and,
through its adapter, the public file people download:

=====================  ==========================================================================
task                   public format read by the adapter
=====================  ==========================================================================
gsm8k                  openai/grade-school-math ``test.jsonl``: ``question``, ``answer`` ending ``#### N``
math, math500          MATH ``{problem, solution, level, type}`` (one JSON per problem, the path gives
                       the id) or prm800k/MATH-500 ``{problem, solution, answer, subject, level, unique_id}``
svamp                  ``SVAMP.json``: ``Body``, ``Question``, ``Answer``, ``Equation``, ``Type``, ``ID``
multiarith/addsub/     Kojima et al.'s JSON: ``sQuestion``, ``lSolutions``, ``lEquations``, ``iIndex``
singleeq
aqua                   AQuA-RAT JSON Lines: ``question``, ``options`` (``A)21``), ``correct``, ``rationale``
commonsenseqa          ``dev_rand_split.jsonl``: ``question.stem``, ``question.choices``, ``answerKey``
strategyqa             BIG-bench ``task.json``: ``examples[].input``, ``target_scores``, ``target``
date_understanding,    BIG-bench ``task.json`` (choices shuffled exactly as Kojima's reader does:
shuffled_objects       ``random.seed(1)``, three shuffles per date example; object tracking unshuffled)
coin_flip,             Kojima's ``{"examples": [{"question", "answer"}]}``
last_letters
bbh/<task>             suzgunmirac/BIG-Bench-Hard ``bbh/<task>.json``: ``examples[].input``, ``target``
ifeval                 ``input_data.jsonl``: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``
hotpotqa               HotpotQA JSON (``_id``, ``question``, ``answer``, ``type``, ``level``)
musique                MuSiQue JSON Lines (``id`` like ``2hop__...``, ``answer_aliases``, ``answerable``)
2wikimultihopqa        2Wiki JSON (``_id``, ``question``, ``answer``, ``type``); ``2wikimultihopqa_aliases``
                       reads rows with ``answer_aliases``
bamboogle              CSV with ``Question``, ``Answer``
=====================  ==========================================================================

The questions the adapters build are byte-identical to the converted files (tests check this), which
in turn match the ``Q:`` lines of Kojima et al.'s published zero-shot-CoT logs.

Unusable golds (gold fed back as the answer cannot score, or cannot be fed back at all):
IFEval has no gold answer (its checks are instructions, not answers); 2 MATH *train* rows have an
empty ``\\boxed{}`` (the ``math`` task reads the test split, where every gold is usable); 3 BBH golds are
option texts split apart in the source (see ``codeplan_tools.eval.scorers.choice``), scored as text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from codeplan_tools.eval.scorers import last_boxed

from . import Adapter, Task, field_subtasks, register_task

# Answer-format instructions appended to prepared prompts; each matches what its scorer extracts strictly.
NUMBER = 'Solve the problem step by step, then finish with "The answer is N." where N is the final number.'
MATH = "Solve the problem step by step, then put the final answer within \\boxed{}."
CHOICE = (
    'Think step by step, then finish with "The answer is (X)." where X is the letter of the correct choice.'
)
YESNO = 'Think step by step, then finish with "The answer is yes." or "The answer is no."'
STRING = 'Think step by step, then finish with "The answer is X." where X is the final answer.'
SHORT = 'Think step by step, then finish with "The answer is X." where X is a short answer (an entity, date, number or yes/no).'


def _labels(*labels: str) -> str:
    return f'Think step by step, then finish with "The answer is X." where X is one of: {", ".join(labels)}.'


def _stem(path: str) -> str:
    """``.../test.jsonl.zst`` -> ``test``."""
    return Path(path).name.split(".", 1)[0]


def _num(x: object) -> str:
    """Kojima's gold text: ``str(number)`` without a trailing ``.0``."""
    s = str(x)
    return s[:-2] if s.endswith(".0") else s


def _converted(row: Mapping) -> bool:
    return isinstance(row.get("question"), str) and "answer" in row and "id" in row


# ---------------------------------------------------------------------------------------------
# Adapters: (rows, path) -> records with id / question / answer.

RowConverter = Callable[[dict, int, str], dict]
"""``convert(row, index in the file, path)``: one public row -> its record."""


def _public_rows(convert: RowConverter) -> Adapter:
    """The adapter that passes rows already in the converted shape through and converts the others."""

    def adapt(rows: Iterable[dict], path: str) -> Iterator[dict]:
        for i, row in enumerate(rows):
            yield row if _converted(row) else convert(row, i, path)

    return adapt


def gsm8k_rows(rows: Iterable[dict], path: str) -> Iterator[dict]:
    for i, row in enumerate(rows):
        if "solution" in row or "####" not in str(row.get("answer", "")):
            yield dict(row, id=row.get("id", f"gsm8k-{_stem(path)}-{i:05d}"))
            continue
        raw = row["answer"].split("####")[-1].strip()
        yield {
            "id": row.get("id", f"gsm8k-{_stem(path)}-{i:05d}"),
            "question": row["question"].strip(),
            "answer": raw.replace(",", ""),
            "answer_raw": raw,
            "solution": row["answer"],
        }


_MATH_PATH = re.compile(r"(train|test)/([a-z_]+)/(\d+)\.json$")


@_public_rows
def math_rows(row: dict, i: int, path: str) -> dict:
    solution = row.get("solution", "")
    answer = row.get("answer")
    if not isinstance(answer, str):
        answer = last_boxed(solution) or ""
    unique_id = row.get("unique_id")
    m = _MATH_PATH.search(str(unique_id or path).replace("\\", "/"))
    if unique_id is None and m:
        unique_id = f"{m.group(1)}/{m.group(2)}/{m.group(3)}.json"
    out = {
        "id": f"math-{m.group(1)}-{m.group(2)}-{m.group(3)}" if m and "subject" not in row else unique_id,
        "question": row["problem"],
        "answer": answer,
        "solution": solution,
        "subject": row.get("subject") or row.get("type"),
        "level": row.get("level"),
        "unique_id": unique_id,
    }
    if out["id"] is None:
        out["id"] = f"math-{_stem(path)}-{i:05d}"
    return out


def _math_subtasks(record: Mapping) -> dict[str, str]:
    level = re.search(r"\d+", str(record.get("level", "")))
    return {"subject": str(record.get("subject") or ""), "level": level.group(0) if level else ""}


@_public_rows
def svamp_rows(row: dict, i: int, path: str) -> dict:
    orig = str(row.get("ID", i))
    return {
        "id": f"svamp-{orig}",
        "question": row["Body"].strip() + " " + row["Question"].strip(),
        "answer": _num(row["Answer"]),
        "body": row["Body"],
        "question_only": row["Question"],
        "equation": row.get("Equation"),
        "type": row.get("Type"),
        "orig_id": orig,
    }


def mawps_rows(prefix: str) -> Adapter:
    """MultiArith / AddSub / SingleEq in Kojima's JSON (``sQuestion``, ``lSolutions``)."""

    def convert(row: dict, i: int, path: str) -> dict:
        return {
            "id": f"{prefix}-{row.get('iIndex', i)}",
            "question": row["sQuestion"].strip(),
            "answer": _num(row["lSolutions"][0]),
            "equations": row.get("lEquations"),
        }

    return _public_rows(convert)


@_public_rows
def aqua_rows(row: dict, i: int, path: str) -> dict:
    options = row["options"]
    choice = "(" + "(".join(options)
    choice = choice.replace("(", " (").replace(")", ") ")
    parsed = [re.match(r"\s*([A-E])\)\s*(.*)", o) for o in options]
    choices = [{"label": m.group(1), "text": m.group(2).strip()} for m in parsed if m]
    answer = row["correct"].strip()
    return {
        "id": f"aqua-{_stem(path)}-{i:03d}",
        "question": row["question"].strip() + " Answer Choices:" + choice,
        "answer": answer,
        "answer_text": next((c["text"] for c in choices if c["label"] == answer), ""),
        "stem": row["question"].strip(),
        "choices": choices,
        "options_raw": options,
        "rationale": row.get("rationale"),
    }


@_public_rows
def csqa_rows(row: dict, i: int, path: str) -> dict:
    q = row["question"]
    choice = "Answer Choices:" + "".join(f" ({c['label']}) {c['text']}" for c in q["choices"])
    answer = row.get("answerKey", "")
    return {
        "id": f"csqa-{row['id']}",
        "question": q["stem"].strip() + " " + choice,
        "answer": answer,
        "answer_text": next((c["text"] for c in q["choices"] if c["label"] == answer), ""),
        "stem": q["stem"],
        "choices": q["choices"],
        "question_concept": q.get("question_concept"),
    }


@_public_rows
def strategyqa_rows(row: dict, i: int, path: str) -> dict:
    return {
        "id": f"strategyqa-{i:04d}",
        "question": row["input"].strip(),
        "answer": "yes" if int(row["target_scores"]["Yes"]) == 1 else "no",
        "explanation": row.get("target"),
    }


def bigbench_choice_rows(prefix: str, letters: str, lead: str, shuffle: bool) -> Adapter:
    """BIG-bench multiple choice as Kojima's reader builds it (date: shuffled with seed 1)."""

    def adapt(rows: Iterable[dict], path: str) -> Iterator[dict]:
        rng = random.Random(1)
        for i, row in enumerate(rows):
            if _converted(row):
                yield row
                continue
            scores = row["target_scores"]
            keys = list(scores)
            if shuffle:
                for _ in range(3):
                    rng.shuffle(keys)
            choice, answer, answer_text, choices = lead, "", "", []
            for letter, key in zip(letters, keys, strict=False):
                choice += f" ({letter}) {key}"
                choices.append({"label": letter, "text": key})
                if scores[key] == 1:
                    answer, answer_text = letter, key
            yield {
                "id": f"{prefix}-{i:04d}",
                "question": row["input"].strip() + " " + choice,
                "answer": answer,
                "answer_text": answer_text,
                "stem": row["input"].strip(),
                "choices": choices,
                "target_scores": scores,
            }

    return adapt


def kojima_rows(prefix: str) -> Adapter:
    """Coin flip and Last Letter: ``{"examples": [{"question", "answer"}]}`` (already the record shape)."""

    def adapt(rows: Iterable[dict], path: str) -> Iterator[dict]:
        for i, row in enumerate(rows):
            yield dict(row, id=row.get("id", f"{prefix}-{i:04d}"), answer=str(row["answer"]))

    return adapt


@_public_rows
def bbh_rows(row: dict, i: int, path: str) -> dict:
    task = _stem(path)
    return {"id": f"bbh-{task}-{i:03d}", "task": task, "question": row["input"], "answer": row["target"]}


@_public_rows
def ifeval_rows(row: dict, i: int, path: str) -> dict:
    return {
        "id": f"ifeval-{row['key']}",
        "question": row["prompt"],
        "answer": "",
        "key": row["key"],
        "prompt": row["prompt"],
        "instruction_id_list": row["instruction_id_list"],
        "kwargs": row["kwargs"],
    }


def qa_rows(prefix: str, numbered: str) -> Adapter:
    """HotpotQA / MuSiQue / 2Wiki / Bamboogle: question + answer (+ aliases); a row's own id is kept
    (``<prefix>-<id>``), rows without one are numbered with ``numbered`` (as in the converted files)."""

    def adapt(rows: Iterable[dict], path: str) -> Iterator[dict]:
        for i, row in enumerate(rows):
            # Public MuSiQue rows also have id/question/answer: converted ones carry our id prefix.
            if _converted(row) and str(row["id"]).startswith(f"{prefix}-"):
                yield row
                continue
            out = {k: v for k, v in row.items() if k not in ("Question", "Answer", "_id", "context")}
            out["question"] = row.get("question", row.get("Question"))
            aliases = row.get("answer_aliases") or row.get("aliases")
            answer = row.get("answer", row.get("Answer"))
            if answer is None and isinstance(aliases, list) and aliases:
                answer = aliases[0]
            out["answer"] = str(answer) if answer is not None else ""
            own = row.get("id", row.get("_id"))
            if own is not None:
                out["orig_id"] = str(own)
            out["id"] = f"{prefix}-{own}" if own is not None else numbered.format(i=i)
            yield out

    return adapt


def _musique_hops(record: Mapping) -> dict[str, str]:
    m = re.match(r"(?:musique-)?(\d)hop", str(record.get("orig_id") or record.get("id") or ""))
    return {"hops": m.group(1)} if m else {}


# ---------------------------------------------------------------------------------------------
# The registry entries.


def _benchmark(
    name: str,
    scorer: str,
    file: str,
    instruction: str,
    adapter: Adapter,
    description: str,
    aliases: tuple[str, ...] = (),
    **settings: Any,
) -> None:
    """Register a task read from one converted ``file`` under the data folder."""
    task = Task(name, scorer, (file,), instruction, adapter, description=description, **settings)
    register_task(task, aliases=aliases)


_benchmark("gsm8k", "numeric", "gsm8k/test.jsonl.zst", NUMBER, gsm8k_rows, "GSM8K test (1319)")
_benchmark(
    "math", "math", "math/test.jsonl.zst", MATH, math_rows, "MATH test (5000), by subject and level",
    subtasks=_math_subtasks, difficulty="level",
)  # fmt: skip
_benchmark(
    "math500", "math", "math500/test.jsonl.zst", MATH, math_rows, "MATH-500 (prm800k split)",
    aliases=("math-500", "math_500"), subtasks=_math_subtasks, difficulty="level",
)  # fmt: skip
_benchmark(
    "svamp", "numeric", "svamp/test.jsonl.zst", NUMBER, svamp_rows, "SVAMP (1000)",
    subtasks=field_subtasks("type"),
)  # fmt: skip
for _name, _desc in (
    ("multiarith", "MultiArith (600)"),
    ("addsub", "AddSub (395)"),
    ("singleeq", "SingleEq (508)"),
):
    _benchmark(_name, "numeric", f"{_name}/test.jsonl.zst", NUMBER, mawps_rows(_name), _desc)
_benchmark("aqua", "choice", "aqua/test.jsonl.zst", CHOICE, aqua_rows, "AQuA-RAT test (254)")
_benchmark(
    "commonsenseqa", "choice", "commonsenseqa/dev.jsonl.zst", CHOICE, csqa_rows, "CommonsenseQA dev (1221)",
    aliases=("csqa",),
)  # fmt: skip
_benchmark(
    "strategyqa", "yesno", "strategyqa/test.jsonl.zst", YESNO, strategyqa_rows, "StrategyQA (BIG-bench, 2290)"
)
# Kojima et al.'s two BIG-bench multiple-choice sets: (name, aliases, description, adapter).
for _name, _aliases, _desc, _rows in (
    (
        "date_understanding", ("date", "bigbench_date"),
        "BIG-bench date understanding, Kojima's shuffled choices (369)",
        bigbench_choice_rows("date", "ABCDEF", "Answer Choices:", shuffle=True),
    ),
    (
        "shuffled_objects", ("object_tracking", "tracking_shuffled_objects"),
        "BIG-bench tracking shuffled objects, three objects (750)",
        bigbench_choice_rows("shuffled_objects", "ABC", "\nWhich choice is true ? Answer Choices:", shuffle=False),
    ),
):  # fmt: skip
    _benchmark(_name, "choice", f"{_name}/test.jsonl.zst", CHOICE, _rows, _desc, aliases=_aliases)
_benchmark(
    "coin_flip", "yesno", "coin_flip/test.jsonl.zst", YESNO, kojima_rows("coin_flip"), "Coin flip (500)"
)
_benchmark(
    "last_letters", "exact", "last_letters/test.jsonl.zst", STRING, kojima_rows("last_letters"),
    "Last Letter concatenation, 4 words (500)",
    aliases=("last_letter",), scorer_options={"normalize": "compact"},
)  # fmt: skip

BBH_CHOICE = (
    "date_understanding disambiguation_qa geometric_shapes hyperbaton logical_deduction_five_objects "
    "logical_deduction_seven_objects logical_deduction_three_objects movie_recommendation penguins_in_a_table "
    "reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks temporal_sequences "
    "tracking_shuffled_objects_five_objects tracking_shuffled_objects_seven_objects "
    "tracking_shuffled_objects_three_objects"
).split()
BBH_YESNO = ("causal_judgement", "navigate", "sports_understanding", "web_of_lies")
BBH_OTHER = {
    "boolean_expressions": ("exact", {"labels": ("True", "False")}, _labels("True", "False")),
    "formal_fallacies": ("exact", {"labels": ("valid", "invalid")}, _labels("valid", "invalid")),
    "multistep_arithmetic_two": ("numeric", {}, NUMBER),
    "object_counting": ("numeric", {}, NUMBER),
    "word_sorting": ("exact", {"normalize": "words"}, STRING + " List the words separated by spaces."),
    "dyck_languages": (
        "exact",
        {"normalize": "compact"},
        STRING + " Give the closing brackets separated by spaces.",
    ),
}
BBH_TASKS = tuple(sorted([*BBH_CHOICE, *BBH_YESNO, *BBH_OTHER]))


def _bbh_filter(sub: str) -> Callable[[Mapping], bool]:
    """Rows of this BBH task; a public file under another name (no known task in it) is taken whole."""
    return lambda row: row.get("task") == sub if row.get("task") in BBH_TASKS else True


for _sub in BBH_TASKS:
    if _sub in BBH_OTHER:
        _scorer, _opts, _instr = BBH_OTHER[_sub]
    else:
        _scorer, _opts, _instr = ("choice", {}, CHOICE) if _sub in BBH_CHOICE else ("yesno", {}, YESNO)
    _benchmark(
        f"bbh/{_sub}", _scorer, "bbh/test.jsonl.zst", _instr, bbh_rows,
        f"BIG-Bench Hard: {_sub.replace('_', ' ')}",
        scorer_options=_opts, group="bbh", row_filter=_bbh_filter(_sub),
    )  # fmt: skip

_benchmark("ifeval", "ifeval", "ifeval/test.jsonl.zst", "", ifeval_rows, "IFEval (541), strict and loose")
_benchmark(
    "hotpotqa", "qa", "hotpotqa/dev.jsonl.zst", SHORT, qa_rows("hotpotqa", "hotpotqa-dev-{i:05d}"),
    "HotpotQA dev distractor questions (7405), by type",
    aliases=("hotpot",), subtasks=field_subtasks("type", "level"),
)  # fmt: skip
_benchmark(
    "musique", "qa", "musique/dev.jsonl.zst", SHORT, qa_rows("musique", "musique-{i:05d}"),
    "MuSiQue-Ans dev (2417), by hop count",
    subtasks=_musique_hops, difficulty="hops",
    row_filter=lambda row: row.get("answerable", True) is not False,
)  # fmt: skip
_benchmark(
    "2wikimultihopqa", "qa", "2wikimultihopqa/dev.jsonl.zst", SHORT, qa_rows("2wiki", "2wiki-dev-{i:05d}"),
    "2WikiMultihopQA dev (12576), no aliases",
    aliases=("2wiki",), subtasks=field_subtasks("type"),
)  # fmt: skip
_benchmark(
    "2wikimultihopqa_aliases", "qa", "2wikimultihopqa/dev1000_aliases.jsonl.zst", SHORT,
    qa_rows("2wiki-dev1000", "2wiki-dev1000-{i:04d}"),
    "2WikiMultihopQA first 1000 dev questions with answer aliases",
    aliases=("2wiki_aliases",), subtasks=field_subtasks("type"),
)  # fmt: skip
_benchmark(
    "bamboogle", "qa", "bamboogle/test.jsonl.zst", SHORT, qa_rows("bamboogle", "bamboogle-{i:03d}"),
    "Bamboogle (125)",
)  # fmt: skip
