"""Throughput of `codeplan pack` against a bare `tokenizer(batch)` call, start-up, and packing efficiency.

    .venv/bin/python bench/pack_bench.py [--tokenizer DIR] [--max-len 2048] [--workers 1 2 4] [--rounds 5]
                                         [--breakdown] [--startup [--base DIR]] [--no-corpora]
                                         [--loaded 1 ...]

In one run, over the same records (GSM8K train, 7,473 question/solution pairs, from ../shared/data):

1. bare: the texts the format renders (prompt text + target text, rendered before the clock starts)
   through one transformers `tokenizer(texts)` call: the fast tokenizer's batched Rust encoding;
2. pack: `codeplan pack`'s library twin, records in, zstd packs out (tokenizer loading, chat-template
   rendering, prompt and target tokenized separately, loss mask, best-fit-decreasing, JSON + zstd), for
   each --workers count (worker start-up included); for each --loaded count (default 1) also with
   pack's tokenizer loaded before the clock starts, as the bare side's is (``pack_records(...,
   tokenizer=...)``): the per-record throughput without the fixed start-up (loading Llama-3's
   tokenizer.json takes ~0.4 s of one core, a third of what the bare call takes for all of GSM8K).

Each pack run is timed between two bare calls and compared with their geometric mean (the machine's
speed drifts from second to second: an A-B-A pairing cancels a steady drift); the settings run in
reverse order every other round, and the median ratio over --rounds is printed. --breakdown times
the pieces of one worker's path in this process, microseconds per record: rendering, tokenizing,
label masks, bin packing, JSON + zstd writing. --startup times whole processes
(`codeplan pack` and a library driver) on one record and on all of GSM8K train; with --base DIR also
the library driver on the code in DIR (`git -C . archive HEAD | tar -x -C DIR`), pairwise. Then the
packing efficiency (tokens / capacity) of every prompt/response corpus in ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))
GSM8K = DATA / "gsm8k" / "train.jsonl.zst"
CORPORA = [
    "gsm8k/train.jsonl.zst",
    "math/train.jsonl.zst",
    "corpus_alpaca_eval_outputs/Meta-Llama-3-8B-Instruct.jsonl.zst",
    "corpus_alpaca_eval_outputs/gpt4_0314.jsonl.zst",
    "corpus_fireact_trajectories/multitask_multimethod.jsonl.zst",
]
# The library driver of --startup: what `codeplan pack -m MODEL -i IN -o OUT` runs, without the CLI.
DRIVER = """
import os, sys, time
from codeplan_tools.core.stage import StageIO, run_stage
from codeplan_tools.stages import pack
model, src, out, fmt, workers = sys.argv[1:6]
# The first tokenizer call: call_tokenizer (in-process chunks), else tokenize, else encode (older code).
names = [n for n in ("call_tokenizer", "tokenize", "encode") if hasattr(pack.Encoder, n)]
firsts = {n: getattr(pack.Encoder, n) for n in names}
def wrap(_first):
    def timed(self, *a):
        if not os.environ.get("PACK_BENCH_SEEN"):
            os.environ["PACK_BENCH_SEEN"] = "1"
            print("first-tokenize", time.time() - float(os.environ["PACK_BENCH_T0"]), file=sys.stderr)
        return _first(self, *a)
    return timed
for name, fn in firsts.items():
    setattr(pack.Encoder, name, wrap(fn))
PackConfig, PackStage = pack.PackConfig, pack.PackStage
stage = PackStage(PackConfig(model=model, format=fmt, workers=int(workers)))
run_stage(StageIO("pack", inputs=[src], output=out, require=stage.require, progress=False, quiet=True), stage)
"""


def load(path: Path) -> list[dict]:
    from codeplan_tools.core.records import normalize
    from codeplan_tools.core.streams import read_records

    rows = []
    for r in read_records([str(path)]):
        normalize(r)
        if isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str):
            rows.append(r)
    return rows


def time_pack(records, config, out_path, tokenizer=None) -> tuple[float, object]:
    """Seconds of ``pack_records`` over ``records`` into a zstd file, written as ``codeplan pack`` writes
    it (``tokenizer``: already loaded, else loaded from ``config.model`` on the clock, as the CLI does)."""
    from codeplan_tools.core.stage import StageContext
    from codeplan_tools.core.streams import RecordWriter
    from codeplan_tools.stages.pack import pack_records

    ctx = StageContext("pack")
    t = time.perf_counter()
    # As `codeplan pack` writes its output (run_stage's writer): zstd on a thread of its own.
    with RecordWriter(out_path, background=True) as w:
        for p in pack_records(records, config, ctx, tokenizer=tokenizer):
            w.write(p)
    return time.perf_counter() - t, ctx.stats


def breakdown(records: list[dict], config, out_path: Path) -> None:
    """Microseconds per record of the one-worker path, piece by piece, in this process."""
    from codeplan_tools.core.stage import StageContext
    from codeplan_tools.core.streams import RecordWriter
    from codeplan_tools.stages.pack import Encoder, Packer

    n = len(records)

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:8.1f} us/record"

    t = time.perf_counter()
    packer = Packer(config, StageContext("pack"))
    print(f"  start-up (load tokenizer, format)  {time.perf_counter() - t:8.3f} s")
    enc: Encoder = packer.encoder
    items = packer._items(records)
    t = time.perf_counter()
    rendered = [enc.format.render(enc.tokenizer, p, plan, r) for p, plan, r in items]
    render_s = time.perf_counter() - t
    t = time.perf_counter()
    for _p, plan, r in items:
        enc.format.unparseable_reason(plan, r)
    check_s = time.perf_counter() - t
    prompts, targets = [p for p, _ in rendered], [t for _, t in rendered]
    t = time.perf_counter()
    enc._ids(prompts + targets, add_special_tokens=False)
    tok_s = time.perf_counter() - t
    t = time.perf_counter()
    prepared = [enc.prepare(items[i : i + config.chunk]) for i in range(0, n, config.chunk)]
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    for p in prepared:
        enc.tokenize(p).results()
    tokenize_s = time.perf_counter() - t
    t = time.perf_counter()
    encoded = packer._encode(records)
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    examples = [ex for rec, res in zip(records, encoded, strict=True) for ex in packer._examples(rec, *res)]
    labels_s = time.perf_counter() - t
    t = time.perf_counter()
    packs = list(packer._packs(examples))
    packing_s = time.perf_counter() - t
    t = time.perf_counter()
    with RecordWriter(out_path) as w:
        for p in packs:
            w.write(p)
    write_s = time.perf_counter() - t
    print(f"  render (chat template + target)    {us(render_s)}")
    print(f"  format checks (unparseable_reason) {us(check_s)}")
    print(f"  tokenize (prompts + targets)       {us(tok_s)}  (one Rust batch call, ids not read)")
    print(f"  prepare: render + checks, chunked  {us(prepare_s)}")
    print(f"  tokenize prepared chunks, ids out  {us(tokenize_s)}  (Rust call + ids into int32 arrays)")
    print(f"  encode, all of the above           {us(encode_s)}  (rendering overlaps tokenizing)")
    print(f"  label masks and over-long checks   {us(labels_s)}")
    print(f"  bin packing (BFD + concatenation)  {us(packing_s)}")
    print(f"  JSON + zstd writing                {us(write_s)}")
    packer.close()


def startup(model: str, fmt: str, base: str | None, rounds: int) -> None:
    """Whole processes on one record and on GSM8K train: the CLI, the library driver, and the driver on
    the code in ``base``, paired per round; medians."""
    py = sys.executable
    cli = str(Path(py).with_name("codeplan"))
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp, "one.jsonl")
        for row in load(GSM8K)[:1]:
            import orjson

            one.write_bytes(orjson.dumps(row) + b"\n")
        runs: dict[str, list[str]] = {}
        for name, src in (("one record", str(one)), ("GSM8K train", str(GSM8K))):
            out = str(Path(tmp, "out.jsonl.zst"))
            runs[f"codeplan pack, {name}"] = [cli, "pack", "-m", model, "-f", fmt, "-i", src, "-o", out, "-q"]
            runs[f"library driver, {name}"] = [py, "-c", DRIVER, model, src, out, fmt, "1"]
            if base:
                runs[f"library driver on {base}, {name}"] = [
                    "BASE",
                    py,
                    "-c",
                    DRIVER,
                    model,
                    src,
                    out,
                    fmt,
                    "1",
                ]
        times: dict[str, list[float]] = {k: [] for k in runs}
        first: dict[str, list[float]] = {}  # library driver: process start to the first tokenizer call
        for _ in range(rounds):
            for label, cmd in runs.items():
                env = dict(os.environ)
                if cmd[0] == "BASE":
                    cmd = cmd[1:]
                    env["PYTHONPATH"] = str(base)
                env["PACK_BENCH_T0"] = repr(time.time())
                t = time.perf_counter()
                done = subprocess.run(
                    cmd,
                    check=True,
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                times[label].append(time.perf_counter() - t)
                for line in done.stderr.splitlines():
                    if line.startswith("first-tokenize "):
                        first.setdefault(label, []).append(float(line.split()[1]))
        for label, ts in times.items():
            print(f"  {label:60s} median {statistics.median(ts):6.2f} s  (rounds: {_rounds(ts)})")
            if label in first:
                ts = first[label]
                print(
                    f"    of which start-up to the first tokenizer call  median {statistics.median(ts):6.2f} s  ({_rounds(ts)})"
                )


def _cpu() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rounds(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=str(DATA / "tokenizers" / "llama-3-8b-instruct"))
    ap.add_argument("--format", default="vanilla", help="vanilla: the corpora have no plans")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pack's --workers counts to time")
    ap.add_argument("--repeat", type=int, default=1, help="copies of GSM8K train to time over")
    ap.add_argument(
        "--rounds", type=int, default=5, help="rounds (each pack run between two bare calls); medians"
    )
    ap.add_argument("--breakdown", action="store_true", help="time the pieces of the one-worker path")
    ap.add_argument("--startup", action="store_true", help="time whole processes on 1 record and on GSM8K")
    ap.add_argument("--base", help="with --startup: also the code in this folder (a pristine copy)")
    ap.add_argument("--no-corpora", dest="corpora", action="store_false", help="skip the efficiency table")
    ap.add_argument(
        "--loaded",
        type=int,
        nargs="*",
        default=[1],
        help="--workers counts also timed with the tokenizer already loaded (pack_records(tokenizer=...)):"
        " the per-record throughput without the fixed start-up",
    )
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from codeplan_tools.formats import get_format
    from codeplan_tools.stages.pack import PackConfig, derived_stats

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    records = load(GSM8K) * args.repeat
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

    def config(workers: int, **kw) -> PackConfig:
        return PackConfig(
            model=args.tokenizer, format=args.format, max_len=args.max_len, workers=workers, **kw
        )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "packs.jsonl.zst"
        if args.breakdown:
            print("\nbreakdown, one worker, in this process:")
            breakdown(records, config(1), out)
        from codeplan_tools.formats.tokenizer import load_pack_tokenizer

        t = time.perf_counter()
        pack_tok = load_pack_tokenizer(args.tokenizer)
        print(f"\npack's tokenizer ({type(pack_tok).__name__}) loads in {time.perf_counter() - t:.3f} s")
        # Each pack run sits between two bare calls and is compared with their geometric mean (the
        # machine's speed drifts within a round; an A-B-A pairing cancels a steady drift), and the
        # settings run in reverse order every other round (so that none always runs first).
        runs = [("workers", w) for w in args.workers] + [("loaded", w) for w in args.loaded]
        times: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
        ratios: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
        bare_s: list[float] = []
        stats = None
        # CPU seconds (this process's threads and its finished workers): what the load of a shared
        # machine changes least.
        bare_cpu: list[float] = []
        pack_cpu: dict[int, list[float]] = {w: [] for w in args.workers}
        for k in range(args.rounds):
            cpu = _cpu()
            before = bare()
            bare_cpu.append(_cpu() - cpu)
            bare_s.append(before)
            for kind, w in runs if k % 2 == 0 else runs[::-1]:
                cpu = _cpu()
                if kind == "workers":
                    secs, stats = time_pack(records, config(w), out)
                    pack_cpu[w].append(_cpu() - cpu)
                else:
                    secs = time_pack(records, config(w), out, tokenizer=pack_tok)[0]
                after = bare()
                bare_s.append(after)
                times[kind, w].append(secs)
                ratios[kind, w].append((before * after) ** 0.5 / secs)
                before = after
        b = statistics.median(bare_s)
        print(
            f"\nmedians of {args.rounds} rounds (tokenizer loading and worker start-up included; each pack run"
            " against the bare calls just before and after it):"
        )
        print(
            f"bare tokenizer(batch):      {len(records) / b:10.0f} records/s  {n_tokens / b:12.0f} tokens/s"
        )
        for (kind, w), ts in times.items():
            p = statistics.median(ts)
            rs = ratios[kind, w]
            label = (
                f"codeplan pack --workers {w}: "
                if kind == "workers"
                else f"  tokenizer loaded, --workers {w}:"
            )
            print(
                f"{label} {len(records) / p:10.0f} records/s  {n_tokens / p:12.0f} tokens/s"
                f"  ratio pack/bare = {statistics.median(rs):.3f}  (rounds: {_rounds(rs)})"
            )
        print(f"CPU seconds, medians: bare {statistics.median(bare_cpu):.2f}", end="")
        for w, ts in pack_cpu.items():
            print(f"  pack --workers {w} {statistics.median(ts):.2f}", end="")
        print("  (pack includes loading the tokenizer and writing zstd packs)")
        assert stats is not None
        eff = derived_stats(stats)["packing_efficiency"]
        print(f"packing efficiency (gsm8k/train, --max-len {args.max_len}): {eff:.4f}")

        if args.startup:
            print("\nwhole processes (start-up included):")
            startup(args.tokenizer, args.format, args.base, args.rounds)

        if args.corpora:
            print(
                f"\npacking efficiency per corpus ({Path(args.tokenizer).name}, --max-len {args.max_len}, {args.format}):"
            )
        for rel in CORPORA if args.corpora else []:
            path = DATA / rel
            if not path.exists():
                continue
            rows = load(path)
            secs, stats = time_pack(rows, config(1, overlong="drop"), Path(tmp) / "c.jsonl.zst")
            d = derived_stats(stats)
            print(
                f"  {rel:60s} rows {len(rows):6d}  packs {int(stats['packs']):5d}  "
                f"efficiency {d['packing_efficiency']:.4f}  loss share {d['loss_token_share']:.3f}  "
                f"overlong dropped {int(stats['overlong_dropped'])}"
            )


if __name__ == "__main__":
    main()
