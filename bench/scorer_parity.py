"""Agreement of `codeplan score`'s scorers with the reference implementations, on the same samples.

    .venv/bin/python bench/scorer_parity.py [--data-dir ../shared/data] [--ifeval N] [--math N] [--gsm8k N]

Where a maintained package holds the reference scorer, it is run side by side with ours:

- **IFEval**: ``if_verifiable.evaluate_output_for_sample`` (Google's IFEval checks, the package's own
  entry point) against ``codeplan_tools.eval.scorers.ifeval``, prompt-level strict and loose, on the real
  IFEval prompts of ``--data-dir`` paired with real model outputs (``corpus_alpaca_eval_outputs``: three
  models' answers to other instructions, so many checks pass and many fail) and with the prompt echoed
  back. Both sides seed ``random`` the same way (``check_seed``): the checkers draw from it when an
  argument is invalid (``letter: "#"``), and an unseeded reference would disagree with itself.
- **MATH-500**: math-verify's own ``verify(parse(gold), parse(response))`` against
  ``codeplan_tools.eval.scorers.math`` (lenient), on gold solutions, a gold solution with its ``\\boxed{}``
  replaced by "The answer is $X$.", another problem's solution (a wrong answer) and a solution cut in
  half (no marked answer).
- **GSM8K** (for information; no package is the GSM8K reference): math-verify on the same texts
  against ``codeplan_tools.eval.scorers.numeric``.

Prints, per task, the number of samples, the share on which both agree, both accuracies, and the
time of each side (ours / reference: the math scorer's time includes starting its worker processes).
The test ``tests/lib/test_scorer_cases.py`` runs the same functions on a few dozen records.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import orjson
import zstandard

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codeplan_tools.eval.scorers import get_scorer  # noqa: E402
from codeplan_tools.eval.scorers.ifeval import check_seed, ensure_tokenizers  # noqa: E402
from codeplan_tools.eval.tasks import get_task, prepare_records  # noqa: E402


def _rows(path: Path) -> list[dict]:
    with path.open("rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# IFEval


def ifeval_parity_samples(data_dir: str | Path, limit: int | None = None) -> list[tuple[dict, str]]:
    """(record, response) pairs: each IFEval prompt with three real model outputs and its own echo."""
    data_dir = Path(data_dir)
    records = list(prepare_records(get_task("ifeval"), data_dir, limit=limit))
    corpora = sorted((data_dir / "corpus_alpaca_eval_outputs").glob("*.jsonl.zst"))
    outputs = [[r["answer"] for r in _rows(p)] for p in corpora]
    samples = []
    for i, record in enumerate(records):
        for texts in outputs:
            samples.append((record, texts[i % len(texts)]))
        samples.append((record, record["question"]))
    return samples


def ifeval_reference(record: dict, response: str) -> tuple[bool, bool]:
    """(prompt-level strict, loose) from if-verifiable's own entry point, ``random`` seeded as ours."""
    from if_verifiable import evaluate_output_for_sample
    from if_verifiable.types import IFEvalSample

    ensure_tokenizers()  # the same NLTK data (or its fallback) on both sides
    sample = IFEvalSample(
        key=record.get("key", 0),
        prompt=record["question"],
        instruction_id_list=record["instruction_id_list"],
        kwargs=record["kwargs"],
    )
    state = random.getstate()
    random.seed(check_seed(record))
    try:
        _results, scores = evaluate_output_for_sample("ifeval", sample, response)
    finally:
        random.setstate(state)
    return bool(scores.binary_strict), bool(scores.binary_loose)


# ---------------------------------------------------------------------------------------------
# MATH and GSM8K against math-verify


def math_parity_samples(data_dir: str | Path, limit: int | None = None) -> list[tuple[dict, str]]:
    """(record, response) pairs from MATH-500 solutions: gold, unboxed, another problem's, cut in half."""
    records = list(prepare_records(get_task("math500"), Path(data_dir), limit=limit))
    samples = []
    for i, record in enumerate(records):
        solution = record["solution"]
        samples.append((record, solution))
        unboxed = solution.replace("\\boxed", "")  # the box gone, the answer still there
        samples.append((record, unboxed + f"\n\nThe answer is ${record['answer']}$."))
        samples.append((record, records[(i + 1) % len(records)]["solution"]))
        samples.append((record, solution[: len(solution) // 2]))
    return samples


def gsm8k_parity_samples(data_dir: str | Path, limit: int | None = None) -> list[tuple[dict, str]]:
    records = list(prepare_records(get_task("gsm8k"), Path(data_dir), limit=limit))
    samples = []
    for i, record in enumerate(records):
        samples.append((record, record["solution"]))
        body = record["solution"].rsplit("####", 1)[0]
        samples.append((record, body + f"The answer is ${record['answer']}.00."))
        samples.append((record, records[(i + 1) % len(records)]["solution"]))
    return samples


def math_reference(gold: str, response: str) -> bool:
    """math-verify as its README uses it: ``verify(parse(gold), parse(answer))``."""
    from math_verify import parse, verify

    return bool(verify(parse("\\boxed{" + gold + "}"), parse(response)))


# ---------------------------------------------------------------------------------------------


def _row(task: str, ours: list[bool], ref: list[bool], t_ours: float, t_ref: float) -> str:
    n = len(ours)
    agree = sum(a == b for a, b in zip(ours, ref, strict=True))
    return (
        f"{task:<18} {n:>6} {100 * agree / n:>8.2f} {100 * sum(ours) / n:>7.1f} {100 * sum(ref) / n:>7.1f} "
        f"{t_ours:>8.2f} {t_ref:>8.2f} {t_ours / t_ref if t_ref else float('nan'):>6.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--ifeval", type=int, default=None, help="IFEval prompts (default: all 541)")
    ap.add_argument("--math", type=int, default=None, help="MATH-500 problems (default: all 500)")
    ap.add_argument("--gsm8k", type=int, default=300, help="GSM8K problems (default 300)")
    ap.add_argument("--workers", type=int, default=2, help="math-verify worker processes of ours")
    args = ap.parse_args(argv)

    print(
        f"{'task':<18} {'n':>6} {'agree%':>8} {'ours%':>7} {'ref%':>7} {'ours s':>8} {'ref s':>8} {'ratio':>6}"
    )
    samples = ifeval_parity_samples(args.data_dir, args.ifeval)
    scorer = get_scorer("ifeval")
    ensure_tokenizers()
    t0 = time.perf_counter()
    ours = [scorer.score(text, record, {}) for record, text in samples]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [ifeval_reference(record, text) for record, text in samples]
    t_ref = time.perf_counter() - t0
    print(_row("ifeval strict", [v.correct_strict for v in ours], [r[0] for r in ref], t_ours, t_ref))
    print(_row("ifeval loose", [v.correct for v in ours], [r[1] for r in ref], t_ours, t_ref))

    for task, family, make in (
        ("math500", "math", math_parity_samples(args.data_dir, args.math)),
        ("gsm8k (info)", "numeric", gsm8k_parity_samples(args.data_dir, args.gsm8k)),
    ):
        scorer = get_scorer(family, workers=args.workers, timeout=10)
        t0 = time.perf_counter()
        try:
            ours = scorer.score_many([(text, record, {}) for record, text in make])
        finally:
            scorer.close()
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = [math_reference(record["answer"], text) for record, text in make]
        t_ref = time.perf_counter() - t0
        print(_row(task, [v.correct for v in ours], ref, t_ours, t_ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
