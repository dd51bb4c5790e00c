"""`codeplan pack` against TRL's SFT preparation + `pack_dataset(strategy="bfd")`, on the same records.

    .venv-peers/bin/python bench/peers/pack_vs_trl.py [--corpus gsm8k/train --corpus math/train] [--max-len 2048]
        [--workers 1] [--rounds 3] [--quick]

For each corpus (question -> prompt, solution -> response) with the Llama-3-8B-Instruct tokenizer, in
paired rounds, times two whole processes over the same JSONL file:

- ``codeplan pack -m TOKENIZER -f vanilla --max-len L --workers W -i IN -o packs.jsonl.zst`` (the
  tokenizer's chat template, loss on the assistant turn, best-fit-decreasing packs);
- TRL: a conversational prompt/completion ``datasets.Dataset`` through ``SFTTrainer._prepare_dataset``
  (the preparation the trainer runs: chat template, tokenization, completion-only labels) with
  ``SFTConfig(max_length=L, packing=True, packing_strategy="bfd", dataset_num_proc=W)``, which ends in
  ``trl.pack_dataset``. It needs no model; the packed rows are then written as zstd JSONL for the
  comparison, and that writing is timed apart and left out of TRL's figure (a TRL user trains from
  the in-memory dataset).

Prints examples/s and tokens/s of each side (median of the rounds), the ratio, the packing efficiency
(tokens / (rows x L)), whether the examples' token ids and loss masks agree (matched by content: TRL's
packs do not keep ids), and what each side's packed rows carry to keep examples apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TOKENIZER = _common.DATA / "tokenizers" / "llama-3-8b-instruct"
CORPORA = ("gsm8k/train", "math/train")
QUICK_RECORDS = 400


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file, zstd or plain (detected from the magic bytes)."""
    import orjson
    import zstandard

    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def write_zstd_jsonl(path: Path, rows) -> None:
    import orjson
    import zstandard

    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")


def prepare_input(corpus_path: Path, out: Path, limit: int | None = None) -> int:
    """The (id, question, solution) rows both sides read, as plain JSONL; returns how many."""
    import orjson

    rows = read_jsonl(corpus_path)[:limit]
    with open(out, "wb") as fh:
        for r in rows:
            fh.write(
                orjson.dumps({"id": r["id"], "question": r["question"], "solution": r["solution"]}) + b"\n"
            )
    return len(rows)


def split_examples(packs: list[dict], lengths_key: str) -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    """Each packed example as (token ids, loss mask), cut out of the rows by their sequence lengths."""
    examples = []
    for row in packs:
        start = 0
        for n in row[lengths_key]:
            ids = tuple(row["input_ids"][start : start + n])
            mask = tuple(label != -100 for label in row["labels"][start : start + n])
            examples.append((ids, mask))
            start += n
    return examples


def compare_examples(ours: list, peer: list, key_len: int = 16, max_len: int | None = None) -> dict:
    """Match the two sides' examples by content (TRL's packs keep no ids): ``same_ids`` when the token
    ids are equal, ``same_mask`` when the loss masks are too; an unmatched peer example whose ids start
    with one of ours counts as ``peer_extends`` (extra tokens at its end: ``extra_tail`` is the most
    common such tail and its count; ``extends_same_mask``: the loss mask agrees on our part;
    ``tail_with_loss``: the extra tokens carry loss). The rest are ``unmatched`` (``at_max_len`` of
    them fill a whole row: truncated, where codeplan drops an over-long example), ``first_unmatched``
    the first such peer example's ids."""
    pool: dict[tuple, list] = {}
    short: list = []  # ours shorter than key_len: a peer example with a tail has a longer key
    for ids, mask in ours:
        (pool.setdefault(ids[:key_len], []) if len(ids) >= key_len else short).append((ids, mask))
    result: dict = dict.fromkeys(
        (
            "same_ids",
            "same_mask",
            "peer_extends",
            "extends_same_mask",
            "tail_with_loss",
            "unmatched",
            "at_max_len",
        ),
        0,
    )
    result.update(ours=len(ours), peer=len(peer), first_unmatched=None)
    tails: Counter = Counter()
    for ids, mask in peer:
        places = [pool.get(ids[:key_len], []), short]
        exact = next(((place, c) for place in places for c in place if c[0] == ids), None)
        if exact is not None:
            exact[0].remove(exact[1])
            result["same_ids"] += 1
            result["same_mask"] += exact[1][1] == mask
            continue
        found = next(((place, c) for place in places for c in place if ids[: len(c[0])] == c[0]), None)
        if found is not None:
            found[0].remove(found[1])
            prefix = found[1]
            result["peer_extends"] += 1
            result["extends_same_mask"] += mask[: len(prefix[1])] == prefix[1]
            result["tail_with_loss"] += all(mask[len(prefix[1]) :])
            tails[ids[len(prefix[0]) :]] += 1
            continue
        result["unmatched"] += 1
        result["at_max_len"] += len(ids) == max_len
        if result["first_unmatched"] is None and len(ids) != max_len:
            result["first_unmatched"] = ids
    result["extra_tail"] = tails.most_common(1)[0] if tails else None
    return result


def efficiency(packs: list[dict], max_len: int) -> float:
    """Non-pad tokens / row capacity (rows x max_len): neither side pads its rows on disk."""
    return sum(len(p["input_ids"]) for p in packs) / (len(packs) * max_len) if packs else 0.0


def positions_restart(packs: list[dict]) -> bool:
    """Whether every pack's position_ids restart at 0 at each example (what keeps examples apart)."""
    for p in packs:
        expected = [i for n in p["seq_lens"] for i in range(n)]
        if p.get("position_ids") != expected:
            return False
    return True


# --- the TRL side (runs under the bench venv) ---------------------------------------------------


def run_trl(
    in_path: str, out_path: str, tokenizer: str, max_len: int, workers: int, template: str = "tokenizer"
) -> None:
    _common.import_or_fail("trl")
    from types import SimpleNamespace

    from datasets import Dataset, disable_progress_bars
    from transformers import AutoTokenizer
    from trl import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    rows = read_jsonl(Path(in_path))
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "completion": [{"role": "assistant", "content": r["solution"]}],
            }
            for r in rows
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            max_length=max_len,
            packing=True,
            packing_strategy="bfd",
            dataset_num_proc=workers if workers > 1 else None,
            report_to=[],
            use_cpu=True,  # (the default asks for bf16 on a GPU; preparation runs on the CPU either way)
            bf16=False,
        )
    # The trainer's own preparation, without a model: the attributes it reads are the ones its
    # __init__ sets for a prompt/completion dataset (completion-only loss, the tokenizer's template).
    chat_template = None  # what the trainer uses unless assistant_only_loss: the tokenizer's own
    if template == "trl-llama3":
        from trl.chat_template_utils import llama3_chat_template

        chat_template = (
            llama3_chat_template  # TRL's copy of the Llama-3 template (trl/chat_templates/llama3.jinja)
        )
    trainer = SimpleNamespace(_tokenizer=tok, completion_only_loss=True, chat_template=chat_template)
    packed = SFTTrainer._prepare_dataset(trainer, dataset, tok, args, True, None, "train")
    start = time.perf_counter()
    write_zstd_jsonl(Path(out_path), packed.to_list())
    print(json.dumps({"dump_seconds": time.perf_counter() - start, "columns": packed.column_names}))


# --- the driver ---------------------------------------------------------------------------------


def compare_corpus(corpus: str, args, codeplan: list[str], peer: str) -> None:
    """Times both sides on one corpus and prints the rates, the efficiency and the agreement."""
    path = _common.DATA / f"{corpus}.jsonl.zst"
    if not path.exists():
        _common.fail(f"no corpus at {path} (set CODEPLAN_SHARED_DATA)", os.EX_NOINPUT)
    with tempfile.TemporaryDirectory(prefix="peers-pack-") as tmp:
        in_path = Path(tmp, "in.jsonl")
        n = prepare_input(path, in_path, QUICK_RECORDS if args.quick else None)
        ours_out, peer_out = Path(tmp, "codeplan.jsonl.zst"), Path(tmp, "trl.jsonl.zst")
        dumps: list[float] = []
        peer_info: dict = {}

        def ours() -> float:
            ours_out.unlink(missing_ok=True)  # a run that finds its output resumes it
            cmd = [*codeplan, "pack", "-q", "--no-progress", "-m", args.tokenizer, "-f", "vanilla"]
            cmd += ["--max-len", str(args.max_len), "--workers", str(args.workers)]
            return _common.run_timed([*cmd, "-i", str(in_path), "-o", str(ours_out)], "codeplan pack")

        def theirs() -> float:
            cmd = [peer, __file__, "--tokenizer", args.tokenizer, "--max-len", str(args.max_len)]
            cmd += ["--workers", str(args.workers), "--trl-template", args.trl_template]
            cmd += ["--as-trl", str(in_path), str(peer_out)]
            info_path = Path(tmp, "trl-info.json")
            with open(info_path, "w") as info:
                seconds = _common.run_timed(cmd, "TRL preparation", stdout=info)
            peer_info.update(json.loads(info_path.read_text().strip().splitlines()[-1]))
            dumps.append(peer_info["dump_seconds"])
            return seconds - peer_info["dump_seconds"]

        ours_label, peer_label = "codeplan pack", "TRL"
        times = _common.paired_rounds(args.rounds, {ours_label: ours, peer_label: theirs})
        ours_packs, peer_packs = read_jsonl(ours_out), read_jsonl(peer_out)
        tokens = {
            ours_label: sum(len(p["input_ids"]) for p in ours_packs),
            peer_label: sum(len(p["input_ids"]) for p in peer_packs),
        }
        print(f"\npack: {corpus}, {n:,} examples, {Path(args.tokenizer).name}, --max-len {args.max_len}")
        print(
            f"  codeplan pack -f vanilla --workers {args.workers} (the tokenizer's chat template, loss on the answer)"
        )
        print(
            f"  TRL: SFTTrainer._prepare_dataset + pack_dataset(bfd), dataset_num_proc {args.workers}, "
            f"chat template: {args.trl_template} (its "
            f"figure leaves out writing its packs for this comparison: median {statistics.median(dumps):.2f}s)"
        )
        ratio = _common.print_rates("examples", {ours_label: n, peer_label: n}, times, ours_label, peer_label)
        for label in times:
            rate = tokens[label] / statistics.median(times[label])
            print(f"{label:20s} {rate:12,.0f} tokens/s  ({tokens[label]:,} tokens)")
        print(f"  (ratio {ratio:.2f} is on examples/s: the same input either side)")
        print(
            f"packing efficiency: codeplan {efficiency(ours_packs, args.max_len):.4f} ({len(ours_packs)} rows), "
            f"TRL {efficiency(peer_packs, args.max_len):.4f} ({len(peer_packs)} rows)"
        )
        same = compare_examples(
            split_examples(ours_packs, "seq_lens"),
            split_examples(peer_packs, "seq_lengths"),
            max_len=args.max_len,
        )
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(args.tokenizer, "tokenizer.json")))
        tail = same["extra_tail"]
        tail_text = ""
        if tail:
            tail_text = (
                f": most often {tok.decode(list(tail[0]), skip_special_tokens=False)!r}, {tail[1]:,} times"
            )
        print(
            f"token ids: {same['same_ids']:,} of {same['peer']:,} TRL examples equal codeplan's "
            f"({same['same_mask']:,} with the same loss mask); {same['peer_extends']:,} are codeplan's plus extra "
            f"tokens at the end{tail_text} (the loss mask the same on codeplan's part: {same['extends_same_mask']:,}; "
            f"loss on the extra tokens: {same['tail_with_loss']:,}); codeplan examples: {same['ours']:,}"
        )
        if same["unmatched"]:
            first = same["first_unmatched"]
            print(
                f"  {same['unmatched']:,} TRL examples match none of codeplan's: {same['at_max_len']:,} fill a whole "
                f"row (TRL truncates an over-long example, codeplan drops it: --overlong drop)"
                + (
                    f"; the first other ends {tok.decode(list(first[-24:]), skip_special_tokens=False)!r}"
                    if first
                    else ""
                )
            )
        print(
            f"codeplan packs carry: {sorted(ours_packs[0])}; position_ids restart at 0 for every example: "
            f"{positions_restart(ours_packs)} (finetune keeps examples apart with them)"
        )
        print(
            f"TRL packs carry: {peer_info.get('columns')}: no position_ids and no mask in the row; its "
            "collator (padding-free, forced for bfd) builds position_ids from seq_lengths and sends no "
            "attention_mask, from which transformers' attention keeps examples apart (varlen flash "
            "kernels, or masking_utils.find_packed_sequence_indices for sdpa/eager). Fed to a model "
            "any other way (a plain collator with an attention_mask), a row is one causal sequence and "
            "its examples attend to the ones before them."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", action="append", help=f"DATA-relative corpus, repeatable [default: {', '.join(CORPORA)}]"
    )
    parser.add_argument("--tokenizer", default=str(TOKENIZER))
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1, help="codeplan --workers / TRL dataset_num_proc")
    _common.add_common_arguments(parser)
    parser.add_argument(
        "--trl-template",
        choices=("tokenizer", "trl-llama3"),
        default="tokenizer",
        help="TRL's chat template: the tokenizer's own (what SFTTrainer uses) or TRL's Llama-3 template "
        "(trl/chat_templates/llama3.jinja)",
    )
    parser.add_argument("--as-trl", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_trl:
        run_trl(*args.as_trl, args.tokenizer, args.max_len, args.workers, args.trl_template)
        return
    _common.check_rounds(args.rounds)
    if args.max_len < 2 or args.workers < 1:
        _common.fail("--max-len must be at least 2 and --workers at least 1", os.EX_USAGE)
    if not Path(args.tokenizer, "tokenizer.json").exists():
        _common.fail(
            f"no tokenizer at {args.tokenizer} (set CODEPLAN_SHARED_DATA or --tokenizer)", os.EX_NOINPUT
        )
    corpora = args.corpus or (["gsm8k/train"] if args.quick else list(CORPORA))
    codeplan = [args.codeplan] if args.codeplan else _common.codeplan_command()
    peer = args.peer_python or _common.peer_python()
    for corpus in corpora:
        compare_corpus(corpus, args, codeplan, peer)


if __name__ == "__main__":
    main()
