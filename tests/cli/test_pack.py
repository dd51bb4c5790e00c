"""`codeplan pack` end to end: records in, packs out, rejects and counters accounted for."""

from __future__ import annotations

import json

import numpy as np

from tests.helpers import invoke, read_records, write_jsonl


def records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append(
            {
                "id": f"r{i}",
                "question": f"Alice has {i} apples and buys {i + 3} more. How many apples does she have?",
                "plan": f"apples = {i}\napples += {i + 3}\nprint(apples)",
                "response": f"She has {i} + {i + 3} = {2 * i + 3} apples. " * (1 + i % 4),
                "extra": {"kept": i},
            }
        )
    out.append(
        {"id": "long", "prompt": "Tell a long story.", "plan": "story()", "response": "and then " * 400}
    )
    return out


def test_pack_writes_packs_rejects_and_stats(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(40))
    result = invoke(
        [
            "pack",
            "--model",
            str(tiny_model),
            "-i",
            str(src),
            "--max-len",
            "256",
            "--workers",
            "1",
            "--stats",
            str(tmp_path / "st.json"),
            "--rejects",
            str(tmp_path / "rej.jsonl"),
            "--plain",
        ]
    )
    assert result.exit_code == 0, result.stderr
    packs = result.records()
    stats = json.loads((tmp_path / "st.json").read_text())
    c = stats["counters"]
    # Every record is packed or rejected; every pack is accounted for.
    assert c["read"] == 41 == c["examples_packed"] + c["rejected"]
    assert c["overlong_dropped"] == 1 and c["written"] == len(packs) == c["packs"]
    rejects = read_records(tmp_path / "rej.jsonl")
    assert [(r["id"], r["meta"]["pack"]["reason"]) for r in rejects] == [("long", "overlong")]
    assert sorted(i for p in packs for i in p["example_ids"]) == sorted(f"r{i}" for i in range(40))
    tokens = sum(len(p["input_ids"]) for p in packs)
    assert c["tokens"] == tokens and c["loss_tokens"] == sum(p["n_loss_tokens"] for p in packs)
    assert stats["derived"]["packing_efficiency"] == round(tokens / (256 * len(packs)), 6)
    assert "packing efficiency" in result.stderr
    for p in packs:
        assert set(p) >= {"input_ids", "labels", "position_ids", "seq_lens", "fingerprint", "example_ids"}
        assert len(p["input_ids"]) == len(p["labels"]) == len(p["position_ids"]) == sum(p["seq_lens"]) <= 256
        starts = np.cumsum([0] + p["seq_lens"][:-1])
        assert all(p["position_ids"][s] == 0 for s in starts)
        assert p["fingerprint"]["max_len"] == 256 and p["fingerprint"]["format"] == "codeplan"


def test_missing_plan_stops_with_65_unless_vanilla(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "p", "response": "r"}])
    result = invoke(["pack", "--model", str(tiny_model), "-i", str(src)])
    assert result.exit_code == 65 and ":1: missing required field 'plan'" in result.stderr
    result = invoke(["pack", "--model", str(tiny_model), "-i", str(src), "--format", "vanilla", "--plain"])
    assert result.exit_code == 0 and len(result.records()) == 1


def test_parallel_workers_give_the_same_packs(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(300))
    args = [
        "pack",
        "--model",
        str(tiny_model),
        "-i",
        str(src),
        "--max-len",
        "512",
        "--overlong",
        "split",
        "--plain",
    ]
    one = invoke([*args, "--workers", "1"])
    two = invoke([*args, "--workers", "2"])
    assert one.exit_code == two.exit_code == 0
    assert one.stdout == two.stdout and len(one.records()) > 10
