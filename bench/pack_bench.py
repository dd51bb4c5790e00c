"""Throughput of `codeplan pack` against a bare `tokenizer(batch)` call, and packing efficiency on real corpora.

    .venv/bin/python bench/pack_bench.py [--tokenizer DIR] [--max-len 2048] [--workers N] [--repeat 1] [--rounds 3]

In one run, over the same records (GSM8K train, 7,473 question/solution pairs, from ../shared/data):

1. bare: the texts the format renders (prompt text + target text, rendered before the clock starts)
   through one `tokenizer(texts)` call: the fast tokenizer's batched Rust encoding, nothing else;
2. pack: `codeplan pack`'s library twin, records in, zstd packs out (chat-template rendering, prompt
   and target tokenized separately, loss mask, best-fit-decreasing, JSON + zstd), with --workers 1
   and with --workers N.

Prints records/s of each (best of --rounds alternating runs) and the ratio pack / bare; the
--workers N figure includes the workers' start-up (each imports transformers and loads the tokenizer). Then the packing efficiency (tokens / capacity)
of every prompt/response corpus in ../shared/data with the same tokenizer and --max-len.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))
CORPORA = [
    "gsm8k/train.jsonl.zst",
    "math/train.jsonl.zst",
    "corpus_alpaca_eval_outputs/Meta-Llama-3-8B-Instruct.jsonl.zst",
    "corpus_alpaca_eval_outputs/gpt4_0314.jsonl.zst",
    "corpus_fireact_trajectories/multitask_multimethod.jsonl.zst",
]


def load(path: Path) -> list[dict]:
    from codeplan_tools.core.records import normalize
    from codeplan_tools.core.streams import read_records

    rows = []
    for r in read_records([str(path)]):
        normalize(r)
        if isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str):
            rows.append(r)
    return rows


def time_pack(records, config, out_path) -> tuple[float, object]:
    from codeplan_tools.core.stage import StageContext
    from codeplan_tools.core.streams import RecordWriter
    from codeplan_tools.stages.pack import pack_records

    ctx = StageContext("pack")
    t = time.perf_counter()
    with RecordWriter(out_path) as w:
        for p in pack_records(records, config, ctx):
            w.write(p)
    return time.perf_counter() - t, ctx.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=str(DATA / "tokenizers" / "llama-3-8b-instruct"))
    ap.add_argument("--format", default="vanilla", help="vanilla: the corpora have no plans")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="copies of GSM8K train to time over")
    ap.add_argument("--no-corpora", dest="corpora", action="store_false", help="skip the efficiency table")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating timings of bare and pack; best of each"
    )
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from codeplan_tools.formats import get_format
    from codeplan_tools.stages.pack import PackConfig, derived_stats

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    records = load(DATA / "gsm8k" / "train.jsonl.zst") * args.repeat
    for i, r in enumerate(records):
        r["id"] = f"{r['id']}-{i}"
    fmt = get_format(args.format, tok)
    texts = [p + t for p, t in (fmt.render(tok, r["prompt"], r.get("plan"), r["response"]) for r in records)]

    def bare() -> float:
        t = time.perf_counter()
        tok(texts)
        return time.perf_counter() - t

    n_tokens = sum(map(len, tok(texts)["input_ids"]))  # also warms the tokenizer up
    print(
        f"records: {len(records)}  tokens: {n_tokens}  tokenizer: {Path(args.tokenizer).name}  cpus: {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg1 = PackConfig(model=args.tokenizer, format=args.format, max_len=args.max_len, workers=1)
        # Alternate the two, best of --rounds each: this machine's load changes from second to second.
        bare_s, pack_s = [], []
        for _ in range(args.rounds):
            bare_s.append(bare())
            secs, stats = time_pack(records, cfg1, Path(tmp) / "packs.jsonl.zst")
            pack_s.append(secs)
        b, p = min(bare_s), min(pack_s)
        print(
            f"bare tokenizer(batch):      {len(records) / b:10.0f} records/s  {n_tokens / b:12.0f} tokens/s"
        )
        print(
            f"codeplan pack --workers 1:  {len(records) / p:10.0f} records/s  {stats['tokens'] / p:12.0f} tokens/s"
            f"  ratio pack/bare = {b / p:.3f}"
        )
        if args.workers > 1:
            cfg = PackConfig(
                model=args.tokenizer, format=args.format, max_len=args.max_len, workers=args.workers
            )
            secs, stats = time_pack(records, cfg, Path(tmp) / "packs.jsonl.zst")
            print(
                f"codeplan pack --workers {args.workers}:  {len(records) / secs:10.0f} records/s  "
                f"{stats['tokens'] / secs:12.0f} tokens/s  ratio pack/bare = {b / secs:.3f} (start-up included)"
            )
        eff = derived_stats(stats)["packing_efficiency"]
        print(f"packing efficiency (gsm8k/train, --max-len {args.max_len}): {eff:.4f}")

        print(
            f"\npacking efficiency per corpus ({Path(args.tokenizer).name}, --max-len {args.max_len}, {args.format}):"
        )
        for rel in CORPORA if args.corpora else []:
            path = DATA / rel
            if not path.exists():
                continue
            rows = load(path)
            cfg = PackConfig(
                model=args.tokenizer, format=args.format, max_len=args.max_len, workers=1, overlong="drop"
            )
            secs, stats = time_pack(rows, cfg, Path(tmp) / "c.jsonl.zst")
            d = derived_stats(stats)
            print(
                f"  {rel:60s} rows {len(rows):6d}  packs {int(stats['packs']):5d}  "
                f"efficiency {d['packing_efficiency']:.4f}  loss share {d['loss_token_share']:.3f}  "
                f"overlong dropped {int(stats['overlong_dropped'])}"
            )


if __name__ == "__main__":
    main()
