"""`codeplan score` against the reference scorers: math-verify on MATH, lm-evaluation-harness's GSM8K
answer extraction on GSM8K, over the same samples.

    .venv-peers/bin/python bench/peers/score_vs_reference.py [--workers 1] [--rounds 3] [--quick]

Samples, built from the test sets' gold answers (all known to be right or wrong):

- MATH test (5,000): the gold answer boxed (``\\boxed{GOLD}``), and the gold answer with its first
  integer + 1, boxed (a near miss; left out where the gold has no integer);
- GSM8K test (1,319): the gold solution (ends ``#### N``), the same with ``#### N+1``, and the same with
  its last line replaced by ``The answer is N.`` (no ``####``: strict extraction finds nothing).

In paired rounds, times two whole processes per data set:

- ``codeplan score --workers W -i IN -o OUT`` (records with ``task`` and ``samples``);
- MATH: math-verify's own loop, ``gold = parse("$" + GOLD + "$")`` once per record, then
  ``verify(gold, parse(sample))`` per sample; GSM8K: lm-eval's ``gsm8k`` task pipeline, read from its
  ``tasks/gsm8k/gsm8k.yaml`` (the ``strict-match`` and ``flexible-extract`` regex filters, then
  ``exact_match`` with the yaml's ``regexes_to_ignore``) against the gold solution as lm-eval's target.

Prints samples/s of each (median of the rounds), the ratio, and verdict agreement (codeplan's lenient
verdict against math-verify and flexible-extract, its strict verdict against strict-match) with the
first few disagreements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

QUICK_RECORDS = 200
_FIRST_INT = re.compile(r"\d+")
_GSM8K_FINAL = re.compile(r"#### *(-?[\d,\.]+)\s*$")


def read_jsonl(path: Path) -> list[dict]:
    import orjson
    import zstandard

    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def bump_first_integer(text: str) -> str | None:
    """The text with its first integer + 1 (a near-miss answer); None when it has no integer."""
    if not _FIRST_INT.search(text):
        return None
    return _FIRST_INT.sub(lambda m: str(int(m.group()) + 1), text, count=1)


def math_records(rows: list[dict]) -> list[dict]:
    """MATH test rows as score records: the gold answer boxed, and its near miss boxed."""
    out = []
    for r in rows:
        gold = r["answer"]
        samples = [f"\\boxed{{{gold}}}"]
        near = bump_first_integer(gold)
        if near is not None:
            samples.append(f"\\boxed{{{near}}}")
        out.append(
            {"id": r["id"], "task": "math", "question": r["question"], "answer": gold, "samples": samples}
        )
    return out


def gsm8k_records(rows: list[dict]) -> list[dict]:
    """GSM8K test rows as score records: the gold solution, its ``#### N+1`` twin, and its answer
    stated as ``The answer is N.`` instead of ``#### N``."""
    out = []
    for r in rows:
        solution = r["solution"].rstrip()
        final = _GSM8K_FINAL.search(solution)
        if final is None:
            continue
        body, number = solution[: final.start()], final.group(1)
        wrong = (
            str(int(number.replace(",", "")) + 1)
            if number.lstrip("-").replace(",", "").isdigit()
            else number + "1"
        )
        samples = [solution, f"{body}#### {wrong}", f"{body}The answer is {number}."]
        out.append(
            {
                "id": r["id"],
                "task": "gsm8k",
                "question": r["question"],
                "answer": r["answer"],
                "solution": r["solution"],
                "samples": samples,
            }
        )
    return out


def codeplan_verdicts(scored: list[dict]) -> dict[str, list[bool]]:
    """Per-sample verdicts from ``codeplan score`` output, in input order: lenient and strict."""
    lenient, strict = [], []
    for r in scored:
        for s in r["meta"]["score"]["samples"]:
            lenient.append(bool(s["correct"]))
            strict.append(bool(s["correct_strict"]))
    return {"lenient": lenient, "strict": strict}


def disagreements(
    ours: list[bool], peer: list[bool], records: list[dict], shown: int = 3
) -> tuple[int, list]:
    """How many verdicts differ, and the first few as (record id, sample, ours, peer)."""
    samples = [(r["id"], s) for r in records for s in r["samples"]]
    if not (len(ours) == len(peer) == len(samples)):
        raise ValueError(f"verdict counts differ: ours {len(ours)}, peer {len(peer)}, samples {len(samples)}")
    differ = [i for i, (a, b) in enumerate(zip(ours, peer, strict=True)) if a != b]
    return len(differ), [(*samples[i], ours[i], peer[i]) for i in differ[:shown]]


# --- the reference side (runs under the bench venv) ---------------------------------------------


def run_math_verify(in_path: str, out_path: str) -> None:
    _common.import_or_fail("math_verify")
    from math_verify import parse, verify

    verdicts = []
    for r in read_jsonl(Path(in_path)):
        gold = parse("$" + r["answer"] + "$")  # a bare MATH gold often parses to nothing; wrapped, all parse
        verdicts.extend(bool(verify(gold, parse(s))) for s in r["samples"])
    Path(out_path).write_text(json.dumps({"verdict": verdicts}))


def lm_eval_gsm8k_pipeline() -> tuple[dict, dict]:
    """lm-eval's gsm8k task config (its yaml, as installed): the filter pipelines and the metric's settings."""
    import yaml

    lm_eval = _common.import_or_fail("lm_eval")
    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    filters = {f["name"]: f["filter"] for f in config["filter_list"]}
    metric = next(m for m in config["metric_list"] if m["metric"] == "exact_match")
    return filters, metric


def run_lm_eval(in_path: str, out_path: str) -> None:
    import lm_eval.filters  # noqa: F401  (registers the filters get_filter names)
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.api.registry import get_filter

    filters, metric = lm_eval_gsm8k_pipeline()
    records = read_jsonl(Path(in_path))
    responses = [[s] for r in records for s in r["samples"]]
    targets = [r["solution"] for r in records for _ in r["samples"]]
    settings = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    out = {}
    for name, steps in filters.items():
        resps = responses
        for step in steps:
            kwargs = {k: v for k, v in step.items() if k != "function"}
            resps = list(get_filter(step["function"])(**kwargs).apply(resps, records))
        out[name] = [
            bool(exact_match_hf_evaluate(predictions=[p], references=[t], **settings)["exact_match"])
            for p, t in zip(resps, targets, strict=True)
        ]
    Path(out_path).write_text(json.dumps(out))


# --- the driver ---------------------------------------------------------------------------------


def compare(name: str, records: list[dict], args, peer_mode: str, pairs: list[tuple[str, str, str]]) -> None:
    """Times codeplan score and the reference on `records`; `pairs`: (codeplan verdict kind, the
    reference's verdict list name, label) to compare."""
    codeplan = [args.codeplan] if args.codeplan else _common.codeplan_command()
    peer = args.peer_python or _common.peer_python()
    n = sum(len(r["samples"]) for r in records)
    with tempfile.TemporaryDirectory(prefix="peers-score-") as tmp:
        import orjson

        in_path = Path(tmp, "in.jsonl")
        in_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        ours_out, peer_out = Path(tmp, "scored.jsonl"), Path(tmp, "reference.json")

        def ours() -> float:
            ours_out.unlink(missing_ok=True)  # a run that finds its output resumes it
            cmd = [*codeplan, "score", "-q", "--no-progress", "--workers", str(args.workers)]
            return _common.run_timed([*cmd, "-i", str(in_path), "-o", str(ours_out)], "codeplan score")

        def theirs() -> float:
            cmd = [peer, __file__, peer_mode, str(in_path), str(peer_out)]
            return _common.run_timed(cmd, f"{name} reference")

        ours_label = "codeplan score"
        peer_label = {"--as-math-verify": "math-verify", "--as-lm-eval": "lm-eval"}[peer_mode]
        times = _common.paired_rounds(args.rounds, {ours_label: ours, peer_label: theirs})
        print(f"\nscore: {name}, {len(records):,} records, {n:,} samples, whole processes")
        print(f"  codeplan score --workers {args.workers}")
        print(
            "  math-verify: parse('$'+gold+'$') once a record, verify(gold, parse(sample)) a sample"
            if peer_mode == "--as-math-verify"
            else "  lm-eval: gsm8k.yaml's strict-match and flexible-extract filters, then exact_match"
        )
        _common.print_rates("samples", {ours_label: n, peer_label: n}, times, ours_label, peer_label)
        ours_v = codeplan_verdicts(read_jsonl(ours_out))
        peer_v = json.loads(peer_out.read_text())
        for kind, peer_name, label in pairs:
            count, first = disagreements(ours_v[kind], peer_v[peer_name], records)
            print(
                f"agreement, codeplan {kind} vs {label}: {n - count:,} of {n:,} verdicts "
                f"(codeplan right {sum(ours_v[kind]):,}, reference right {sum(peer_v[peer_name]):,})"
            )
            if kind == "strict" and count:
                print(
                    "  (codeplan's strict extraction also reads 'The answer is N'; strict-match only '#### N')"
                )
            for rid, sample, a, b in first:
                print(f"  differs: {rid} codeplan={a} reference={b} sample={sample[-90:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=1, help="codeplan score --workers (the references run in one process)"
    )
    parser.add_argument("--only", choices=("math", "gsm8k"), help="one data set only")
    _common.add_common_arguments(parser)
    parser.add_argument("--as-math-verify", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--as-lm-eval", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_math_verify:
        run_math_verify(*args.as_math_verify)
        return
    if args.as_lm_eval:
        run_lm_eval(*args.as_lm_eval)
        return
    _common.check_rounds(args.rounds)
    if args.workers < 1:
        _common.fail(f"--workers must be at least 1, not {args.workers}", os.EX_USAGE)
    limit = QUICK_RECORDS if args.quick else None
    sets = {"math": ("math/test.jsonl.zst", math_records), "gsm8k": ("gsm8k/test.jsonl.zst", gsm8k_records)}
    for name, (rel, build) in sets.items():
        if args.only and name != args.only:
            continue
        path = _common.DATA / rel
        if not path.exists():
            _common.fail(f"no test set at {path} (set CODEPLAN_SHARED_DATA)", os.EX_NOINPUT)
        records = build(read_jsonl(path)[:limit])
        if name == "math":
            compare("MATH test", records, args, "--as-math-verify", [("lenient", "verdict", "math-verify")])
        else:
            compare(
                "GSM8K test",
                records,
                args,
                "--as-lm-eval",
                [
                    ("strict", "strict-match", "lm-eval strict-match"),
                    ("lenient", "flexible-extract", "lm-eval flexible-extract"),
                ],
            )


if __name__ == "__main__":
    main()
