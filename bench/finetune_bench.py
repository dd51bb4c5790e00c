"""Training throughput of `codeplan finetune` against a bare PyTorch loop on the same packs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/finetune_bench.py [--model DIR] [--steps 30] [--max-len 1024]
        [--nproc 1] [--hidden 128 --layers 2]    # size of the from-scratch model when --model is not given

(On a small shared CPU machine set OMP_NUM_THREADS=1: OpenMP threads spinning against other
processes made both loops ten times slower here.)

In one run:

1. packs: GSM8K train (../shared/data) packed with the model's tokenizer (vanilla format);
2. ours: `codeplan finetune` as a subprocess (FSDP2, block-diagonal attention per packed example,
   per-token loss over the accumulation window, DCP checkpoint at the end, export); tokens/s is the
   mean of its metrics lines after the first step (start-up and export excluded);
3. bare: the same model and packs in a plain loop in this process (no FSDP, plain causal SDPA over
   the whole pack, mean loss, AdamW), the fastest thing the trainer could be.

Prints tokens/s of each and the ratio ours / bare, plus MFU where the device's peak is known.
On a GPU, pass --model with a ~1B Llama and the trainer runs in bf16 with flash-attn or SDPA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_packs(model: str, path: Path, max_len: int, rows: int) -> None:
    import itertools

    from codeplan_tools.core.records import normalize
    from codeplan_tools.core.streams import RecordWriter, read_records
    from codeplan_tools.stages.pack import PackConfig, pack_records

    records = [
        normalize(r) for r in itertools.islice(read_records([str(DATA / "gsm8k" / "train.jsonl.zst")]), rows)
    ]
    cfg = PackConfig(model=model, format="vanilla", max_len=max_len, overlong="truncate", workers=1)
    with RecordWriter(path) as w:
        for p in pack_records(records, cfg):
            w.write(p)


def ours(model: str, packs: Path, out: Path, steps: int, nproc: int, extra: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "codeplan_cli", "finetune", "--model", model, "--data", str(packs), "--out", str(out),
           "--max-steps", str(steps), "--save-every", "0", "--lr", "1e-4", "--nproc", str(nproc), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"codeplan finetune failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def bare(model: str, packs: Path, steps: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from codeplan_tools.trainer.data import read_packs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa").to(
        device
    )
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    ps = read_packs([str(packs)]).packs
    tokens, start = 0, None
    for step in range(steps):
        p = ps[step % len(ps)]
        ids = torch.tensor(p.input_ids, device=device)[None]
        labels = torch.tensor(p.labels, device=device)[None]
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = m(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step == 0:
            start = time.perf_counter()  # like ours: the first step (warm-up) is not counted
        else:
            tokens += ids.numel()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Hugging Face model folder (default: a from-scratch Llama made here)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=2000, help="GSM8K rows packed")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more `codeplan finetune` flags, after --")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from codeplan_tools.tools.init_model import init_model

            heads = max(1, args.hidden // 32)
            model = str(
                init_model(tmp / "model", hidden_size=args.hidden, layers=args.layers, heads=heads,
                           kv_heads=max(1, heads // 2), head_dim=32, max_len=max(1024, args.max_len))
            )  # fmt: skip
        packs = tmp / "packs.jsonl.zst"
        make_packs(model, packs, args.max_len, args.rows)
        lines = ours(model, packs, tmp / "out", args.steps, args.nproc, args.extra)
        timed = lines[1:]
        ours_tps = sum(d["tokens"] for d in timed) / sum(d["tokens"] / d["tokens_per_s"] for d in timed)
        mfu = [d["mfu"] for d in timed if d.get("mfu") is not None]
        bare_tps = bare(model, packs, args.steps)
        print(
            f"model: {model}  steps: {args.steps}  max_len: {args.max_len}  nproc: {args.nproc}  cpus: {os.cpu_count()}"
        )
        print(
            f"codeplan finetune: {ours_tps:10.0f} tokens/s (all ranks)"
            + (f"  mfu {sum(mfu) / len(mfu):.3f}" if mfu else "")
        )
        print(f"bare loop:         {bare_tps:10.0f} tokens/s (one process)")
        print(f"ratio ours / bare: {ours_tps / bare_tps:.3f}")
        print(
            f"loss: {lines[0]['loss']:.3f} -> {lines[-1]['loss']:.3f}; peak memory {lines[-1]['peak_mem_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    main()
