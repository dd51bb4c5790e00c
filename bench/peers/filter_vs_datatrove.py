"""`codeplan filter` against datatrove doing the same checks, on the same synthetic mined records.

    .venv-peers/bin/python bench/peers/filter_vs_datatrove.py [--records 1000000] [--workers 2] [--rounds 3] [--quick]

Builds N GSM8K-shaped mined records (prompt, code plan, response, meta.extract) as --workers zstd
shards; about 26% of them are made to fail exactly one of filter's default rules (terminated,
nonempty, length, code, no-leak, dedup), and each record's id names the rule it should fail (or
``ok``). Then, in paired rounds, times two whole processes over the same shards:

- ``codeplan filter --workers W -i SHARD ... -o kept.jsonl.zst`` (the command main holds now);
- datatrove: ``JsonlReader`` -> one ``LambdaFilter`` per rule -> ``JsonlWriter`` (zstd), run by a
  ``LocalPipelineExecutor`` with W tasks and W workers, one shard per task (datatrove splits work by
  file). The lambdas call codeplan's own rule functions with the same ``FilterConfig`` defaults, so
  both sides make the same decisions and the comparison is of the pipelines around them. dedup is a
  set of prompt digests in each task; the generator copies prompts only within a shard, so a
  per-task set finds every duplicate that codeplan's global one does.

Prints both rates (records/s, median of the rounds), the ratio codeplan / datatrove, and whether the
kept id sets agree (with each other and with the ids built to be kept).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# The rule each built record fails, and the share of records that fail it (26% in all).
FAILING_SHARES = {
    "terminated": 0.05,
    "nonempty": 0.04,
    "length": 0.04,
    "code": 0.05,
    "no-leak": 0.04,
    "dedup": 0.04,
}
KEPT = "ok"
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy"]
ITEMS = ["apples", "eggs", "clips", "books", "pencils", "cookies", "marbles", "stamps"]


def _problem(rng: random.Random, i: int) -> tuple[str, str, str]:
    """A GSM8K-shaped (prompt, code plan, response); the record number makes every prompt distinct."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 90), rng.randint(2, 12), rng.randint(2, 24)
    total = a + b * c
    prompt = (
        f"{name} works at store number {i} and has {a} {item}. {name} buys {b} boxes with {c} {item} "
        f"in each box. How many {item} does {name} have now?"
    )
    plan = "\n".join(
        [
            "```python",
            f"{item} = {a}",
            f"boxes = {b}",
            f"per_box = {c}",
            f"total = {item} + boxes * per_box",
            "print(total)",
            "```",
        ]
    )
    response = (
        f"{name} buys {b} boxes of {c} {item}, which is {b} * {c} = {b * c} {item}.\n"
        f"Together with the {a} {item} {name} already had, that makes {a} + {b * c} = {total} {item}.\n"
        f"#### {total}"
    )
    return prompt, plan, response


def make_records(n: int, shards: int = 1, seed: int = 0) -> Iterator[tuple[int, dict]]:
    """Yields (shard, record) for n records in `shards` contiguous blocks; the id is ``<n>-<rule>``
    (the default rule the record fails, or ``ok``). A dedup record copies the prompt of an earlier
    kept record of its own shard."""
    rng = random.Random(seed)
    kinds = list(FAILING_SHARES)
    cumulative, acc = [], 0.0
    for kind in kinds:
        acc += FAILING_SHARES[kind]
        cumulative.append(acc)
    kept_prompts: deque[str] = deque(maxlen=1000)
    shard_of = -1
    for i in range(n):
        shard = i * shards // n
        if shard != shard_of:
            shard_of = shard
            kept_prompts.clear()  # duplicates stay within a shard (datatrove dedups per task)
        draw = rng.random()
        kind = next((k for k, c in zip(kinds, cumulative, strict=True) if draw < c), KEPT)
        if kind == "dedup" and not kept_prompts:
            kind = KEPT
        prompt, plan, response = _problem(rng, i)
        finish = "stop"
        if kind == "terminated":
            finish = "length"
        elif kind == "nonempty":
            plan = "```python\n# add the boxes to what she had\n```"
        elif kind == "length":
            # Too short (1 word < 3) or too long (70 lines of 4 words > 200).
            plan = "print(total)" if rng.random() < 0.5 else "\n".join(["total = total + 1"] * 70)
        elif kind == "code":
            plan = "First find how many were bought.\nThen add them to what was there.\nReport the sum."
        elif kind == "no-leak":
            # The response copied into comments: code lines still pass `code`, the n-grams leak.
            plan = "\n".join(["# " + line for line in response.splitlines()] + plan.splitlines()[1:-1])
        elif kind == "dedup":
            prompt = rng.choice(kept_prompts)
        if kind == KEPT:
            kept_prompts.append(prompt)
        record = {
            "id": f"{i:07d}-{kind}",
            "prompt": prompt,
            "plan": plan,
            "response": response,
            "meta": {"extract": {"finish_reason": finish, "tokens_out": 40 + len(plan) // 4}},
        }
        yield shard, record


def build(folder: Path, n: int, shards: int, seed: int = 0) -> tuple[list[Path], set[str]]:
    """Writes the records as `shards` zstd JSONL files; returns their paths in order and the ids of
    the records built to pass every rule."""
    import orjson
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{s:05d}.jsonl.zst" for s in range(shards)]
    files = [open(p, "wb") for p in paths]
    writers = [zstandard.ZstdCompressor(level=3).stream_writer(f) for f in files]
    passing: set[str] = set()
    try:
        for shard, record in make_records(n, shards, seed):
            writers[shard].write(orjson.dumps(record) + b"\n")
            if record["id"].endswith("-" + KEPT):
                passing.add(record["id"])
    finally:
        for w in writers:
            w.close()  # also closes the file
    return paths, passing


def kept_ids(paths) -> set[str]:
    """The ids in JSONL(.zst) files (codeplan's output or datatrove's writer shards)."""
    import io

    import orjson
    import zstandard

    ids: set[str] = set()
    for path in paths:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            stream = (
                zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
                if head == b"\x28\xb5\x2f\xfd"
                else fh
            )
            for line in io.BufferedReader(stream, 1 << 20):  # type: ignore[arg-type]
                if line.strip():
                    ids.add(orjson.loads(line)["id"])
    return ids


def agreement(ours: set[str], peer: set[str]) -> dict:
    """Whether two kept sets are the same, and what differs (a few ids of each side's extras)."""
    only_ours, only_peer = sorted(ours - peer), sorted(peer - ours)
    return {
        "equal": not only_ours and not only_peer,
        "ours": len(ours),
        "peer": len(peer),
        "only_ours": only_ours[:5],
        "only_peer": only_peer[:5],
        "n_only_ours": len(only_ours),
        "n_only_peer": len(only_peer),
    }


# --- the datatrove side (runs under the bench venv) ---------------------------------------------


def run_datatrove(in_dir: str, out_dir: str, workers: int) -> None:
    _common.import_or_fail("datatrove")
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from codeplan_tools.stages.filter import RULES, FilterConfig, prompt_digest

    config = FilterConfig()

    def per_record_filter(check):
        # The reader puts the plan in doc.text (text_key="plan") and the other fields in doc.metadata.
        return LambdaFilter(lambda doc: check({"plan": doc.text, **doc.metadata}, config) is None)

    seen: set[bytes] = set()  # one task per process: this set is the task's

    def first_seen(doc) -> bool:
        digest = prompt_digest(doc.metadata)
        if digest in seen:
            return False
        seen.add(digest)
        return True

    enabled = [r for name, r in RULES.items() if name in config.enabled and not r.ordered]
    filters = [per_record_filter(rule.check) for rule in enabled]
    shards = len([p for p in os.listdir(in_dir) if p.endswith(".jsonl.zst")])
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(in_dir, text_key="plan", glob_pattern="*.jsonl.zst"),
            *filters,
            LambdaFilter(first_seen),
            JsonlWriter(out_dir, compression="zstd"),
        ],
        tasks=shards,
        workers=workers,
        logging_dir=str(Path(out_dir).parent / "datatrove-logs"),
        skip_completed=False,
    ).run()


# --- the driver ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="synthetic mined records to build")
    parser.add_argument("--workers", type=int, default=2, help="workers of both sides (and input shards)")
    parser.add_argument("--seed", type=int, default=0)
    _common.add_common_arguments(parser)
    parser.add_argument("--as-datatrove", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_datatrove:
        run_datatrove(*args.as_datatrove, workers=args.workers)
        return
    _common.check_rounds(args.rounds)
    if args.workers < 1:
        _common.fail(f"--workers must be at least 1, not {args.workers}", os.EX_USAGE)
    n = 20_000 if args.quick else args.records
    if n < args.workers:
        _common.fail(f"--records must be at least --workers ({args.workers}), not {n}", os.EX_USAGE)
    codeplan = [args.codeplan] if args.codeplan else _common.codeplan_command()
    peer = args.peer_python or _common.peer_python()

    with tempfile.TemporaryDirectory(prefix="peers-filter-") as tmp:
        in_dir = Path(tmp, "in")
        shards, built_to_pass = build(in_dir, n, args.workers, args.seed)
        print(f"built {n:,} records in {args.workers} shard(s) under {in_dir}", file=sys.stderr)
        ours_out = Path(tmp, "codeplan-kept.jsonl.zst")
        peer_out = Path(tmp, "datatrove-out")

        def ours() -> float:
            ours_out.unlink(missing_ok=True)  # a run that finds its output resumes it
            inputs = [arg for p in shards for arg in ("-i", str(p))]
            cmd = [*codeplan, "filter", "-q", "--no-progress", "--workers", str(args.workers), *inputs]
            return _common.run_timed([*cmd, "-o", str(ours_out)], "codeplan filter")

        def theirs() -> float:
            cmd = [
                peer,
                __file__,
                "--workers",
                str(args.workers),
                "--as-datatrove",
                str(in_dir),
                str(peer_out),
            ]
            return _common.run_timed(cmd, "datatrove pipeline")

        ours_label, peer_label = "codeplan filter", "datatrove"
        times = _common.paired_rounds(args.rounds, {ours_label: ours, peer_label: theirs})
        print(f"filter: {n:,} synthetic mined records, {args.workers} worker(s) each side, whole processes")
        print(f"  codeplan filter --workers {args.workers} -i SHARD ... (default rules)")
        print(
            f"  datatrove: JsonlReader -> {len(FAILING_SHARES)} LambdaFilters -> JsonlWriter, {args.workers} tasks/workers"
        )
        _common.print_rates("records", {ours_label: n, peer_label: n}, times, ours_label, peer_label)
        ours_kept = kept_ids([ours_out])
        peer_kept = kept_ids(sorted(peer_out.glob("*.jsonl*")))
        built = agreement(ours_kept, built_to_pass)
        same = agreement(ours_kept, peer_kept)
        print(
            f"kept: codeplan {same['ours']:,}, datatrove {same['peer']:,}; kept sets "
            f"{'identical' if same['equal'] else 'DIFFER'}"
            + (
                ""
                if same["equal"]
                else f" (only codeplan: {same['n_only_ours']} e.g. {same['only_ours']}; "
                f"only datatrove: {same['n_only_peer']} e.g. {same['only_peer']})"
            )
        )
        print(f"codeplan kept exactly the records built to pass: {built['equal']}")


if __name__ == "__main__":
    main()
