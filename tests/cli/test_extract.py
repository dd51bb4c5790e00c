"""``codeplan extract`` end to end on the tiny model (hf engine): resume after SIGKILL, settings
mismatch, sharding, GSM8K rows with rejects, progress on stderr."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time

import orjson
import zstandard

from codeplan_tools.core.errors import EX_CONFIG
from tests.helpers import CODEPLAN, invoke, read_records


def _write(path, records) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def _pairs(n: int) -> list[dict]:
    return [
        {"id": f"r{i:03d}", "prompt": f"Add {i} and {i + 1}.", "response": f"{i} + {i + 1} = {2 * i + 1}."}
        for i in range(n)
    ]


def _complete_frames(path) -> list[dict]:
    """Records in the complete zstd frames of a file another process is still writing (read-only)."""
    data = path.read_bytes() if path.exists() else b""
    out, pos = [], 0
    while pos < len(data):
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            chunk = dobj.decompress(data[pos:])
        except zstandard.ZstdError:
            break
        if not dobj.eof:
            break
        out.append(chunk)
        pos = len(data) - len(dobj.unused_data)
    return [orjson.loads(line) for line in b"".join(out).splitlines() if line.strip()]


def _extract(model, *args: str) -> list[str]:
    return ["extract", "-m", str(model), "--engine", "hf", *args]


def test_sigkill_then_rerun_gives_every_id_once_and_other_settings_are_refused(tiny_model, tmp_path):
    records = _pairs(60)
    src = _write(tmp_path / "in.jsonl", records)
    out = tmp_path / "mined.jsonl.zst"
    # Sampling keeps the random model from stopping at once, so the run lasts long enough to be killed.
    args = _extract(
        tiny_model, "-i", src, "-o", str(out), "--chunk-size", "1", "--max-tokens", "64", "-t", "1.0"
    )
    proc = subprocess.Popen([*CODEPLAN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not _complete_frames(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = _complete_frames(out)
    assert 0 < len(before) < len(records)

    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == [r["id"] for r in records]  # every id, exactly once
    assert "skipped_done=" in again.stderr

    assert args[-2:] == ["-t", "1.0"]
    for changed, name in (
        (["-t", "1.0", "--template", "nlplan"], "template"),
        (["-t", "0.5"], "temperature"),
    ):
        refused = invoke([*args[:-2], *changed])
        assert refused.exit_code == EX_CONFIG
        assert name in refused.stderr and "other settings" in refused.stderr
        assert len(read_records(out)) == len(records)  # nothing was appended


def test_shards_together_equal_the_unsharded_run(tiny_model, tmp_path):
    src = _write(tmp_path / "in.jsonl", _pairs(15))
    common = _extract(tiny_model, "-i", src, "--max-tokens", "6", "--plain", "-q")
    full = invoke([*common, "-o", str(tmp_path / "all.jsonl")])
    assert full.exit_code == 0, full.stderr
    whole = {r["id"]: r["plan"] for r in read_records(tmp_path / "all.jsonl")}
    assert len(whole) == 15
    parts: dict[str, str] = {}
    for i in range(3):
        res = invoke([*common, "--shard", f"{i}/3", "-o", str(tmp_path / f"s{i}.jsonl")])
        assert res.exit_code == 0, res.stderr
        part = {r["id"]: r["plan"] for r in read_records(tmp_path / f"s{i}.jsonl")}
        assert not set(part) & set(parts)  # shards are disjoint
        parts.update(part)
    assert parts == whole


def test_gsm8k_rows_get_plans_and_overlong_rows_are_rejected(tiny_model, shared_data, tmp_path):
    from transformers import AutoTokenizer

    from codeplan_tools.core.records import normalize
    from codeplan_tools.core.streams import read_records as read_input
    from codeplan_tools.engines.base import Request, prompt_token_ids
    from codeplan_tools.stages.extract import fill_template, load_template

    rows = list(itertools.islice(read_input([str(shared_data / "gsm8k/train.jsonl.zst")]), 50))
    src = _write(tmp_path / "gsm8k50.jsonl", rows)
    # A context at the median prompt length: the longer half cannot be taken.
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    _, template = load_template("paper")
    lengths = {}
    for r in rows:
        n = normalize(dict(r))
        msg = [{"role": "user", "content": fill_template(template, n["prompt"], n["response"])}]
        lengths[r["id"]] = len(prompt_token_ids(tok, Request(id=r["id"], messages=msg)))
    context = sorted(lengths.values())[25]
    too_long = {i for i, n in lengths.items() if n >= context}

    res = invoke(
        _extract(tiny_model, "-i", src, "-o", str(tmp_path / "out.jsonl.zst"), "--rejects", str(tmp_path / "rej.jsonl"),
                 "--max-model-len", str(context), "--max-tokens", "8", "--seed", "7", "--stats", str(tmp_path / "s.json"))
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    out, rej = read_records(tmp_path / "out.jsonl.zst"), read_records(tmp_path / "rej.jsonl")
    assert {r["id"] for r in rej} == too_long and {r["id"] for r in out} == set(lengths) - too_long
    for r in rej:
        assert r["meta"]["extract"]["reason"] == (
            f"prompt-too-long: {lengths[r['id']]} prompt tokens, the model's context is {context}"
        )
    keys = {"model", "engine", "dtype", "template", "template_sha256", "temperature", "top_p", "max_tokens", "seed",
            "global_seed", "finish_reason", "tokens_in", "tokens_out", "run_key", "settings"}  # fmt: skip
    for r in out:
        meta = r["meta"]["extract"]
        assert isinstance(r["plan"], str) and r["prompt"] == r["question"] and r["response"] == r["solution"]
        assert keys <= set(meta), keys - set(meta)
        assert meta["template"] == "paper" and meta["max_tokens"] == 8 and meta["global_seed"] == 7
        assert meta["tokens_in"] == lengths[r["id"]] and meta["finish_reason"] in ("stop", "length")
    stats = orjson.loads((tmp_path / "s.json").read_bytes())["counters"]
    assert stats["read"] == 50 == stats["written"] + stats["rejected"]
    assert stats["rejected.prompt-too-long"] == len(too_long)
    # Progress on stderr: records/s, tokens/s, ETA (the input is a file, so its size is known).
    assert "rec/s" in res.stderr and "tok/s" in res.stderr and "ETA" in res.stderr


def test_extract_through_an_openai_compatible_server(tiny_model, vllm_server, tmp_path):
    """The openai engine against the session's real `vllm serve` (fp32, greedy): the same plans as hf."""
    src = _write(tmp_path / "in.jsonl", _pairs(3))
    served = invoke(
        ["extract", "-m", vllm_server.model, "--engine", "openai", "--base-url", vllm_server.base_url,
         "--api-key-env", vllm_server.api_key_env, "-i", src, "--max-tokens", "12", "-o", str(tmp_path / "o.jsonl")]
    )  # fmt: skip
    assert served.exit_code == 0, served.stderr
    local = invoke(_extract(tiny_model, "-i", src, "--max-tokens", "12", "-o", str(tmp_path / "h.jsonl")))
    assert local.exit_code == 0, local.stderr
    o, h = read_records(tmp_path / "o.jsonl"), read_records(tmp_path / "h.jsonl")
    assert [r["meta"]["extract"]["engine"] for r in o] == ["openai"] * 3
    # (vLLM holds back a character cut in half by max_tokens; transformers decodes it as U+FFFD.)
    assert [(r["id"], r["plan"].rstrip("\ufffd")) for r in o] == [
        (r["id"], r["plan"].rstrip("\ufffd")) for r in h
    ]
    assert [r["meta"]["extract"]["tokens_out"] for r in o] == [r["meta"]["extract"]["tokens_out"] for r in h]
    assert all(r["meta"]["extract"]["tokens_out"] > 0 for r in o)


def test_a_template_that_is_not_utf8_is_one_line_naming_its_line(tiny_model, tmp_path):
    from codeplan_tools.core.errors import EX_DATAERR

    template = tmp_path / "t.txt"
    template.write_bytes(b"Prompt: {prompt}\nResponse: {response}\nPlan caf\xe9 \xff\n")
    src = _write(tmp_path / "in.jsonl", _pairs(1))
    res = invoke(_extract(tiny_model, "-i", src, "--template", str(template)))
    assert res.exit_code == EX_DATAERR, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"{template}:3:" in res.stderr and "UTF-8" in res.stderr
