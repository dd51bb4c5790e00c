"""One prepared GPU check (run through bench/gpu_check.sh): what codeplan's GPU paths do on one GPU.

    bench/gpu_check.sh                 # one H100/H200, <= 8 minutes, a ~1B random Llama in bf16
    bench/gpu_check.sh --cpu-smoke     # the same script on a tiny model on the CPU (CI: it cannot rot)

Prints one table (and, with --json FILE, the same rows as JSON):

1. train: tokens/s, MFU and peak memory of FSDP2 training steps (``fully_shard`` on a 1-rank mesh,
   bf16 mixed precision, AdamW, the trainer's own ``attention.model_inputs`` and loss) with each
   confined-attention path available: flash (flash-attn varlen, when installed), flex
   (flex_attention + document-causal BlockMask), sdpa (dense block-diagonal mask). Packs of random
   documents (64-1024 tokens) fill each row. MFU counts FLOPs as torchtitan's
   ``get_dense_model_nparams_and_flops``: ``6 * N + 12 * layers * heads * head_dim * seq_len`` per
   token, N the parameters without the input embedding (the LM head counted), seq_len the pack
   length (no credit taken for the causal or per-document sparsity), against the dense bf16 peak of
   the device (989 TFLOPS for H100 SXM and H200; the table names the one used).
2. parity: logits of a pack of 4 documents against each document run alone (plain causal SDPA), per
   path, in the training dtype (bf16 on GPU, fp32 on CPU); the table gives the worst gap, the
   tolerance, and the gap that plain causal attention over the pack would give (so the check can fail).
3. cli finetune: ``codeplan finetune`` itself (``--attention auto``: flash, else flex on a GPU) for a
   few steps on synthetic packs: its own tokens/s, MFU and memory lines; then the export round
   trip: the exported safetensors equal the last DCP checkpoint's weights, and the folder loads and
   generates in transformers.
4. lora: ``codeplan finetune --lora-r 16`` for a few steps ("n/a" when this codeplan has no --lora-r).
5. generate: the ``generate`` stage with ``--engine hf`` (greedy) against bare transformers
   ``model.generate`` on the same prompt ids and batch size: output tokens/s of each, and the ratio.

Needs torch and transformers only beyond codeplan's own dependencies (no vLLM, no flash-attn). Every
section runs in a try block: a failure is a row saying so, not a lost table. Sections that would
start after --budget-s are skipped with a row saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int  # of the throughput model (the CLI model's vocabulary is its trained tokenizer's)
    seq_len: int
    micro_batch: int
    steps: int  # timed steps per path (after the warm-up ones)
    warmup: int
    cli_steps: int
    gen_prompts: int
    gen_tokens: int
    gen_batch: int


# ~1.1B parameters (Llama-3.2-1B's layer shapes, a 32k vocabulary, untied): 16k tokens per step.
GPU = Size(2048, 16, 32, 8, 64, 8192, 32000, 4096, 4, 6, 3, 4, 64, 64, 32)
SMOKE = Size(128, 2, 4, 2, 32, 256, 1024, 256, 2, 2, 1, 2, 6, 8, 4)
# The command-line sections (fine-tune + export, LoRA, generate) load, checkpoint and export a model
# folder several times: a ~0.25B model of the same depth keeps them inside the 8 minutes.
CLI_GPU = dataclasses.replace(GPU, hidden=1024, heads=16, intermediate=4096)


class Table:
    def __init__(self, json_path: str | None):
        self.rows: list[dict] = []
        self.json_path = json_path

    def add(self, check: str, path: str, status: str, result: str = "", detail: str = "") -> None:
        row = {"check": check, "path": path, "status": status, "result": result, "detail": detail}
        self.rows.append(row)
        print(f"gpu_check: {check} [{path}] {status} {result} {detail}".rstrip(), file=sys.stderr, flush=True)

    def print(self) -> None:
        heads = ("check", "path", "status", "result", "detail")
        widths = [max(len(h), *(len(r[h]) for r in self.rows)) for h in heads]
        line = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))
        print(line)
        print("  ".join("-" * w for w in widths))
        for r in self.rows:
            print("  ".join(r[h].ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(self.rows, indent=1) + "\n")


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


# -- the throughput model and its packs ------------------------------------------------------------


def llama_config(size: Size, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        head_dim=size.head_dim,
        max_position_embeddings=max(size.seq_len, 2048),
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )


def random_packs(size: Size, vocab: int, n_batches: int, device, seed: int = 0):
    """Micro-batches of ``micro_batch`` rows of ``seq_len`` tokens, each row random documents back to
    back (the last one cut to fit), with targets and positions as the trainer makes them."""
    import torch

    from codeplan_tools.trainer.data import IGNORE

    g = torch.Generator().manual_seed(seed)
    lo, hi = min(64, size.seq_len // 4), min(1024, size.seq_len // 2)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(0, vocab, (size.micro_batch, size.seq_len), generator=g)
        pos = torch.zeros_like(ids)
        tgt = torch.full_like(ids, IGNORE)
        seq_lens = []
        for r in range(size.micro_batch):
            lens, used = [], 0
            while used < size.seq_len:
                n = min(int(torch.randint(lo, hi + 1, (1,), generator=g)), size.seq_len - used)
                lens.append(n)
                pos[r, used : used + n] = torch.arange(n)
                tgt[r, used : used + n - 1] = ids[r, used + 1 : used + n]  # no target across documents
                used += n
            seq_lens.append(lens)
        batches.append((ids.to(device), pos.to(device), tgt.to(device), seq_lens))
    return batches


def flops_per_token(model, size: Size) -> float:
    """torchtitan's count: 6 N (N without the input embedding) + 12 l h q t, t the pack length."""
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * size.layers * size.heads * size.head_dim * size.seq_len


def paths_available(device_type: str) -> list[tuple[str, str | None]]:
    """(attention path, why it is not available or None), in the order flash, flex, sdpa."""
    from codeplan_tools.trainer import attention

    out: list[tuple[str, str | None]] = []
    if device_type == "cuda":
        out.append(
            ("flash_attention_2", None if attention.flash_available() else "flash-attn is not installed")
        )
        out.append(("flex_attention", None))
    else:
        out.append(("flash_attention_2", "needs a GPU"))
        out.append(("flex_attention", "flex_attention has no CPU backward (its forward is tested in CI)"))
    out.append(("sdpa", None))
    return out


def train_step(model, optimizer, batch, impl: str, float_dtype) -> float:
    """One optimizer step on one micro-batch, as ``Trainer.train_step`` computes it."""
    import torch
    import torch.nn.functional as F

    from codeplan_tools.trainer import attention

    ids, pos, tgt, seq_lens = batch
    inputs = attention.model_inputs(ids, pos, seq_lens, impl, float_dtype=float_dtype)
    logits = model(**inputs, use_cache=False).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def section_train(table: Table, ctx) -> None:
    import torch

    from codeplan_tools.trainer import distributed, metrics

    size, device = ctx.size, ctx.device
    torch.manual_seed(0)
    cfg = llama_config(size, size.vocab)
    from transformers import LlamaForCausalLM

    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    distributed.shard_model(model, device, bf16=ctx.bf16)
    ctx.model = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8)
    per_token = flops_per_token(model, size)
    peak = metrics.peak_flops(device, ctx.bf16)
    n_params = sum(p.numel() for p in model.parameters())
    table.add(
        "model", "-", "info",
        f"{n_params / 1e6:,.1f}M params, {'bf16 mixed' if ctx.bf16 else 'fp32'}, FSDP2 1 rank",
        f"{size.layers}x{size.hidden}, {size.heads}/{size.kv_heads} heads, {size.micro_batch}x{size.seq_len} "
        f"tokens/step, {per_token / 1e9:.3g} GFLOP/token; peak "
        + (f"{peak / 1e12:.0f} TFLOPS ({ctx.device_name})" if peak else "unknown (no MFU)"),
    )  # fmt: skip
    batches = ctx.batches = random_packs(size, size.vocab, size.warmup + size.steps, device)
    float_dtype = torch.bfloat16 if ctx.bf16 else torch.float32
    for impl, missing in paths_available(device.type):
        if missing:
            table.add("train", impl, "n/a", "", missing)
            continue
        if ctx.over_budget():
            table.add("train", impl, "skipped", "", "over the time budget")
            continue
        model.config._attn_implementation = impl
        try:
            t_compile = time.perf_counter()
            for b in batches[: size.warmup]:  # flex compiles here
                train_step(model, optimizer, b, impl, float_dtype)
            sync(device)
            warm_s = time.perf_counter() - t_compile
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            losses = [train_step(model, optimizer, b, impl, float_dtype) for b in batches[size.warmup :]]
            sync(device)
            seconds = time.perf_counter() - t0
            tokens = size.steps * size.micro_batch * size.seq_len
            tps = tokens / seconds
            mfu = f"{tps * per_token / peak:.1%}" if peak else "n/a"
            ok = all(math.isfinite(x) for x in losses)
            table.add(
                "train", impl, "ok" if ok else "FAIL",
                f"{tps:,.0f} tok/s, MFU {mfu}, peak {metrics.peak_mem_gib(device):.1f} GiB",
                f"{size.steps} steps in {seconds:.1f}s after {size.warmup} warm-up ({warm_s:.0f}s); loss {losses[-1]:.3f}",
            )  # fmt: skip
        except Exception as exc:  # one path failing must not hide the others
            table.add("train", impl, "FAIL", "", short_error(exc))
            traceback.print_exc()
        finally:
            optimizer.zero_grad(set_to_none=True)


def section_parity(table: Table, ctx) -> None:
    """Packed logits against each document alone (plain causal SDPA), per attention path.

    The packs are the first training micro-batch (same shapes as training, so flex is not compiled
    again), the model stays in training mode (Llama has no dropout) under no_grad.
    """
    import torch

    from codeplan_tools.trainer import attention

    model, device = ctx.model, ctx.device
    float_dtype = torch.bfloat16 if ctx.bf16 else torch.float32
    # bf16: every matmul rounds to 8 bits of mantissa, so two kernels (flex or SDPA's, packed or
    # alone) drift apart over the layers by up to a few percent of the largest logit. fp32: close.
    rel_tol = 3e-2 if ctx.bf16 else 1e-4
    ids, pos, _, seq_lens = ctx.batches[0]
    rows, length = ids.shape
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        alone = []
        for r, lens in enumerate(seq_lens):
            starts = [sum(lens[:k]) for k in range(len(lens))]
            alone.append(
                [
                    model(input_ids=ids[r : r + 1, s : s + n]).logits[0].float()
                    for s, n in zip(starts, lens, strict=True)
                ]
            )
        scale = max(a.abs().max().item() for row in alone for a in row)
        # What the confinement prevents: plain causal attention over each whole pack (explicit mask,
        # so no version of transformers infers the documents from the positions).
        causal = (
            torch.ones(length, length, dtype=torch.bool, device=device)
            .tril()[None, None]
            .expand(rows, 1, -1, -1)
        )
        leaky = model(input_ids=ids, position_ids=pos, attention_mask=causal).logits.float()
        leak = max(gap(leaky[r], alone[r], seq_lens[r]) for r in range(rows))
        n_docs = sum(len(x) for x in seq_lens)
        for impl, missing in paths_available(device.type):
            if missing:
                table.add("parity", impl, "n/a", "", missing)
                continue
            if ctx.over_budget():
                table.add("parity", impl, "skipped", "", "over the time budget")
                continue
            try:
                model.config._attn_implementation = impl
                kwargs = attention.model_inputs(ids, pos, seq_lens, impl, float_dtype=float_dtype)
                packed = model(**kwargs).logits.reshape(rows, length, -1).float()
                worst = max(gap(packed[r], alone[r], seq_lens[r]) for r in range(rows))
                ok = worst <= rel_tol * scale and leak > worst
                table.add(
                    "parity", impl, "ok" if ok else "FAIL",
                    f"max |packed - alone| {worst:.3g} {'<=' if ok else '>'} {rel_tol:g} x {scale:.3g}",
                    f"{'bf16' if ctx.bf16 else 'fp32'}, {n_docs} documents in {rows}x{length}; "
                    f"plain causal over the pack: {leak:.3g}",
                )  # fmt: skip
            except Exception as exc:
                table.add("parity", impl, "FAIL", "", short_error(exc))
                traceback.print_exc()


def gap(packed, alone, lens) -> float:
    start, worst = 0, 0.0
    for a, n in zip(alone, lens, strict=True):
        worst = max(worst, (packed[start : start + n] - a).abs().max().item())
        start += n
    return worst


# -- the codeplan command line ---------------------------------------------------------------------


CODEPLAN = [sys.executable, "-m", "codeplan_cli"]


def cli_env(tmp: Path) -> dict[str, str]:
    """The environment for `python -m codeplan_cli`: the checkout importable even when not installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        import codeplan_cli  # noqa: F401
    except ImportError:  # a bare checkout: cli/ is the codeplan_cli package
        shim = tmp / "shim"
        shim.mkdir(exist_ok=True)
        if not (shim / "codeplan_cli").exists():
            (shim / "codeplan_cli").symlink_to(REPO / "cli")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(ctx, args: list[str], log: Path, timeout: float) -> tuple[int, list[dict], str]:
    """Run `codeplan ARGS`; (exit code, JSON lines of stdout, its stderr)."""
    with open(log, "w") as err:
        proc = subprocess.run(
            [*CODEPLAN, *args], stdout=subprocess.PIPE, stderr=err, env=ctx.env, timeout=timeout
        )
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines() if x.startswith("{")]
    return proc.returncode, lines, log.read_text()


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else ""


def cli_help(ctx, command: str) -> str:
    proc = subprocess.run([*CODEPLAN, command, "--help"], capture_output=True, text=True, env=ctx.env)
    return proc.stdout


def prepare_cli_model(ctx) -> None:
    """A model folder of the same layer shapes (its own small tokenizer) and synthetic packs for it."""
    from codeplan_tools.core.streams import RecordWriter, read_records
    from codeplan_tools.stages.pack import PackConfig, pack_records
    from codeplan_tools.tools.init_model import init_model

    size = ctx.cli
    t0 = time.perf_counter()
    ctx.model_dir = init_model(
        ctx.tmp / "model", hidden_size=size.hidden, layers=size.layers, heads=size.heads,
        kv_heads=size.kv_heads, head_dim=size.head_dim, intermediate_size=size.intermediate,
        vocab_size=4096, max_len=max(size.seq_len, 2048), init_range=0.02, seed=0,
    )  # fmt: skip
    pairs = ctx.tmp / "pairs.jsonl.zst"
    n = 40 * size.cli_steps * max(1, size.seq_len // 512)
    rc = subprocess.run(
        [*CODEPLAN, "synth", "last_letter,coin_flip,arithmetic", "--n", str(n), "--k", "2-4",
         "--seed", "1", "-o", str(pairs), "-q"],
        env=ctx.env, capture_output=True, text=True,
    )  # fmt: skip
    if rc.returncode != 0:
        raise RuntimeError(f"codeplan synth failed: {rc.stderr[-500:]}")
    ctx.packs = ctx.tmp / "packs.jsonl.zst"
    cfg = PackConfig(model=str(ctx.model_dir), format="codeplan", max_len=size.seq_len, workers=1)
    with RecordWriter(ctx.packs) as w:
        for p in pack_records(read_records([str(pairs)]), cfg):
            w.write(p)
    ctx.prepare_s = time.perf_counter() - t0


def finetune_args(ctx, out: Path, extra: list[str]) -> list[str]:
    return [
        "finetune", "--model", str(ctx.model_dir), "--data", str(ctx.packs), "--out", str(out),
        "--max-steps", str(ctx.cli.cli_steps), "--save-every", "0", "--lr", "1e-4", "--warmup-steps", "1",
        *extra,
    ]  # fmt: skip


def summarize_metrics(lines: list[dict]) -> str:
    last = lines[-1]
    mfu = "n/a" if last.get("mfu") is None else f"{last['mfu']:.1%}"
    return f"{last['tokens_per_s']:,.0f} tok/s, MFU {mfu}, peak {last['peak_mem_gib']:.1f} GiB"


def section_cli_finetune(table: Table, ctx) -> None:
    out = ctx.tmp / "ft"
    args = finetune_args(ctx, out, ["--attention", "auto"])
    rc, lines, log = run_cli(ctx, args, ctx.tmp / "ft.log", timeout=ctx.remaining())
    # The trainer's start line names the attention implementation that --attention auto chose.
    found = re.search(r"attention (\w+)", log)
    attn = found.group(1) if found else "?"
    if rc != 0 or not lines:
        table.add("cli finetune", attn, "FAIL", f"exit {rc}", last_line(log))
        return
    losses = [d["loss"] for d in lines]
    table.add(
        "cli finetune", attn, "ok", summarize_metrics(lines),
        f"{len(lines)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} (MFU: the trainer's own count, per-document attention)",
    )  # fmt: skip
    if ctx.over_budget():
        table.add("export round trip", "-", "skipped", "", "over the time budget")
        return
    try:
        table.add("export round trip", "-", *export_round_trip(ctx, out))
    except Exception as exc:
        table.add("export round trip", "-", "FAIL", "", short_error(exc))
        traceback.print_exc()


def export_round_trip(ctx, out: Path) -> tuple[str, str, str]:
    """The exported weights equal the final DCP checkpoint's; the folder loads and generates."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = sorted((out / "checkpoints").glob("step-*[0-9]"))[-1]
    # Only the model's part of the checkpoint (the optimizer's is twice its size), read without collectives.
    meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    saved = {
        key[len("model.") :]: torch.empty(m.size, dtype=m.properties.dtype)
        for key, m in meta.items()
        if key.startswith("model.") and hasattr(m, "size")
    }
    dcp.load({"model": saved}, checkpoint_id=str(ckpt), no_dist=True)
    exported: dict = {}
    for f in sorted(out.glob("*.safetensors")):
        exported.update(load_file(f))
    worst, compared = 0.0, 0
    for name, tensor in exported.items():
        ref = saved[name].to(tensor.dtype)
        worst = max(worst, (tensor.float() - ref.float()).abs().max().item())
        compared += 1
    missing = [k for k in saved if k not in exported and not k.endswith("lm_head.weight")]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16 if ctx.bf16 else torch.float32)
    model.to(ctx.device)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("A plan:", return_tensors="pt").input_ids.to(ctx.device)
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    ok = worst == 0.0 and not missing and gen.shape[1] > ids.shape[1]
    return (
        "ok" if ok else "FAIL",
        f"{compared} tensors equal the checkpoint (max gap {worst:g})"
        + (f"; missing {missing[:3]}" if missing else ""),
        f"{ckpt.name} -> {sum(f.stat().st_size for f in out.glob('*.safetensors')) / 2**20:,.0f} MiB safetensors; "
        f"loads and generates in transformers",
    )


def section_lora(table: Table, ctx) -> None:
    import importlib.util

    if "--lora-r" not in cli_help(ctx, "finetune"):
        table.add("lora step", "-", "n/a", "", "this codeplan finetune has no --lora-r")
        return
    if importlib.util.find_spec("peft") is None:
        table.add("lora step", "-", "n/a", "", "peft is not installed (pip install 'codeplan[lora]')")
        return
    out = ctx.tmp / "lora"
    args = finetune_args(ctx, out, ["--lora-r", "16", "--attention", "auto"])
    rc, lines, log = run_cli(ctx, args, ctx.tmp / "lora.log", timeout=ctx.remaining())
    if rc != 0 or not lines:
        table.add("lora step", "r=16", "FAIL", f"exit {rc}", last_line(log))
        return
    exported = (out / "model.safetensors").is_file() or any(out.glob("model-*.safetensors"))
    table.add(
        "lora step", "r=16", "ok" if exported else "FAIL", summarize_metrics(lines),
        f"{len(lines)} steps, loss {lines[0]['loss']:.3f} -> {lines[-1]['loss']:.3f}; merged export "
        + ("written" if exported else "missing"),
    )  # fmt: skip


def section_generate(table: Table, ctx) -> None:
    """`generate --engine hf` (the stage the command runs, engine built once) vs bare model.generate."""
    import generate_bench as gb

    from codeplan_tools.engines.spec import EngineSpec
    from codeplan_tools.stages.generate import GenerateConfig

    size = ctx.cli
    dtype = "bfloat16" if ctx.bf16 else "float32"
    spec = EngineSpec(model=str(ctx.model_dir), engine="hf", dtype=dtype, batch_size=size.gen_batch)
    engine = spec.build()
    cfg = GenerateConfig(format="codeplan", n=1, temperature=0.0, max_tokens=size.gen_tokens, seed=0)
    records = gb.questions(size.gen_prompts, None)
    src = ctx.tmp / "questions.jsonl.zst"
    gb.write_input(records, src)
    texts = gb.prompt_texts(engine, cfg, records)
    gb.bare_hf(engine.model, engine.tokenizer, texts[: size.gen_batch], cfg, size.gen_batch)  # warm-up
    best = {"codeplan": 0.0, "bare": 0.0}
    for r in range(2):  # interleaved rounds, the best of each kept
        tokens, seconds = gb.run_codeplan(engine, spec, cfg, src, ctx.tmp / f"gen{r}.jsonl.zst")
        best["codeplan"] = max(best["codeplan"], tokens / seconds)
        tokens, seconds = gb.bare_hf(engine.model, engine.tokenizer, texts, cfg, size.gen_batch)
        best["bare"] = max(best["bare"], tokens / seconds)
    ratio = best["codeplan"] / best["bare"]
    table.add(
        "generate", "hf", "ok",
        f"codeplan {best['codeplan']:,.0f} tok/s, bare model.generate {best['bare']:,.0f} tok/s, ratio {ratio:.2f}",
        f"{size.gen_prompts} prompts, greedy, {size.gen_tokens} new tokens, batch {size.gen_batch}, {dtype}, best of 2",
    )  # fmt: skip
    close = getattr(engine, "close", None)
    if close is not None:
        close()


# -- driver ----------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Context:
    def __init__(self, args):
        import torch

        self.smoke = args.cpu_smoke
        self.size = SMOKE if self.smoke else GPU
        self.cli = SMOKE if self.smoke else CLI_GPU
        self.device = torch.device("cpu") if self.smoke else torch.device("cuda", 0)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.bf16 = not self.smoke
        self.device_name = "CPU" if self.smoke else torch.cuda.get_device_name(self.device)
        self.tmp = Path(args.work or tempfile.mkdtemp(prefix="codeplan-gpu-check-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = cli_env(self.tmp)
        self.budget_s = args.budget_s
        self.t0 = time.monotonic()
        self.model = None
        self.batches: list = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return max(30.0, self.budget_s - self.elapsed() + 60.0)

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the tiny model on the CPU (for CI)")
    parser.add_argument(
        "--budget-s", type=float, default=400.0, help="start no section after this many seconds"
    )
    parser.add_argument("--json", help="also write the table's rows to this file as JSON")
    parser.add_argument("--work", help="working folder (default: a new temporary one)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; run with --cpu-smoke on a CPU machine", file=sys.stderr)
        return 69
    ctx = Context(args)
    table = Table(args.json)
    from codeplan_tools.trainer import attention, distributed

    table.add(
        "env", "-", "info", ctx.device_name,
        f"torch {torch.__version__}, transformers {transformers.__version__}, flash-attn "
        f"{'yes' if attention.flash_available() else 'no'}",
    )  # fmt: skip
    distributed.init_process_group(distributed.DistInfo(), ctx.device)
    try:
        for name, section in (("train", section_train), ("parity", section_parity)):
            if name == "parity" and ctx.model is None:
                table.add("parity", "-", "skipped", "", "no model (train failed)")
                continue
            try:
                section(table, ctx)
            except Exception as exc:
                table.add(name, "-", "FAIL", "", short_error(exc))
                traceback.print_exc()
        ctx.model, ctx.batches = None, []  # free the GPU for the command-line runs
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            prepare_cli_model(ctx)
            c = ctx.cli
            table.add(
                "cli model", "-", "info", f"{c.layers}x{c.hidden}, {c.heads}/{c.kv_heads} heads, packs of {c.seq_len}",
                f"a model folder (fp32) and its packs written in {ctx.prepare_s:.0f}s",
            )  # fmt: skip
        except Exception as exc:
            table.add("cli model", "-", "FAIL", "", short_error(exc))
            traceback.print_exc()
        else:
            for name, section in (
                ("cli finetune", section_cli_finetune),
                ("lora step", section_lora),
                ("generate", section_generate),
            ):
                if ctx.over_budget():
                    table.add(name, "-", "skipped", "", "over the time budget")
                    continue
                try:
                    section(table, ctx)
                except Exception as exc:
                    table.add(name, "-", "FAIL", "", short_error(exc))
                    traceback.print_exc()
    finally:
        distributed.destroy_process_group()
    table.add("total", "-", "info", f"{ctx.elapsed():.0f}s", str(ctx.tmp))
    table.print()
    return 1 if any(r["status"] == "FAIL" for r in table.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
