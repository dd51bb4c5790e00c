"""bench/peers/: the inputs the three peer benchmarks build, and the functions that judge agreement.

The codeplan side runs here with the core install; the peer sides (datatrove, TRL, lm-eval) run only
where their packages are importable (the bench venv, `make bench-peers`), and are skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

from tests.conftest import REPO, SHARED_DATA

PEERS = REPO / "bench" / "peers"
sys.path.insert(0, str(PEERS))

import filter_vs_datatrove as fvd  # noqa: E402
import pack_vs_trl as pvt  # noqa: E402
import score_vs_reference as svr  # noqa: E402

CODEPLAN = [sys.executable, "-m", "codeplan_cli"]


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here (the bench venv has it: make bench-peers)")


def _read(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


@pytest.mark.parametrize("script", ["filter_vs_datatrove", "pack_vs_trl", "score_vs_reference"])
def test_each_script_explains_itself_and_rejects_a_bad_flag(script):
    path = PEERS / f"{script}.py"
    shown = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--rounds" in shown.stdout and "--quick" in shown.stdout
    bad = subprocess.run([sys.executable, str(path), "--rounds", "0"], capture_output=True, text=True)
    assert bad.returncode == 64 and bad.stderr.strip().splitlines() == [
        "error: --rounds must be at least 1, not 0"
    ]


# --- filter ---------------------------------------------------------------------------------------


def test_filter_records_fail_the_rule_their_id_names(tmp_path):
    """The built records are what the benchmark says: codeplan filter keeps exactly the `ok` ones and
    rejects every other with the rule its id names (so ~26% fail one rule each)."""
    shards, built_to_pass = fvd.build(tmp_path / "in", 3000, shards=2, seed=1)
    assert len(fvd.kept_ids(shards)) == 3000  # every id is distinct, duplicates' included
    out, rejects = tmp_path / "kept.jsonl", tmp_path / "rejects.jsonl"
    inputs = [arg for p in shards for arg in ("-i", str(p))]
    cmd = [*CODEPLAN, "filter", "-q", "--no-progress", "--workers", "1", *inputs, "-o", str(out)]
    subprocess.run([*cmd, "--rejects", str(rejects)], check=True)
    assert fvd.kept_ids([out]) == built_to_pass
    rejected = _read(rejects)
    for record in rejected:
        assert record["meta"]["filter"]["reason"].startswith(record["id"].split("-", 1)[1] + ":"), record
    share = len(rejected) / 3000
    assert 0.2 < share < 0.32, share
    assert {r["id"].split("-", 1)[1] for r in rejected} == set(fvd.FAILING_SHARES)


def test_filter_duplicates_stay_within_their_shard():
    """datatrove dedups per task (one shard each), so a copied prompt must come from its own shard."""
    first_shard: dict[str, int] = {}
    dups = 0
    for shard, record in fvd.make_records(4000, shards=3, seed=2):
        if record["id"].endswith("-dedup"):
            dups += 1
            assert first_shard[record["prompt"]] == shard
        else:
            assert record["prompt"] not in first_shard  # every other prompt is new
            first_shard[record["prompt"]] = shard
    assert dups > 100


def test_filter_agreement_names_what_differs():
    assert fvd.agreement({"a", "b"}, {"b", "a"})["equal"]
    differs = fvd.agreement({"a", "b", "c"}, {"b", "d"})
    assert not differs["equal"]
    assert (differs["only_ours"], differs["only_peer"]) == (["a", "c"], ["d"])
    assert (differs["ours"], differs["peer"]) == (3, 2)


def test_filter_datatrove_side_keeps_the_same_records(tmp_path):
    _needs("datatrove")
    shards, built_to_pass = fvd.build(tmp_path / "in", 600, shards=2, seed=3)
    fvd.run_datatrove(str(tmp_path / "in"), str(tmp_path / "out"), workers=1)
    assert fvd.kept_ids(sorted((tmp_path / "out").glob("*.jsonl*"))) == built_to_pass


# --- pack -----------------------------------------------------------------------------------------


def test_pack_examples_are_matched_by_content():
    # codeplan: two examples (prompt tokens carry no loss); TRL: the same two, reordered, one with a
    # tail that carries loss, plus one truncated to the row (4 tokens) and one that is simply different.
    ours = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "seq_lens": [3, 2]}]
    peer = [
        {"input_ids": [4, 5, 9, 9], "labels": [-100, 5, 9, 9], "seq_lengths": [4]},
        {"input_ids": [1, 2, 3, 7, 7, 7], "labels": [-100, 2, 3, -100, 7, 7], "seq_lengths": [3, 1, 2]},
    ]
    examples = pvt.split_examples(ours, "seq_lens")
    assert examples == [((1, 2, 3), (False, True, True)), ((4, 5), (False, True))]
    same = pvt.compare_examples(examples, pvt.split_examples(peer, "seq_lengths"), key_len=1, max_len=4)
    assert (same["same_ids"], same["same_mask"]) == (1, 1)
    assert (same["peer_extends"], same["extends_same_mask"], same["tail_with_loss"]) == (1, 1, 1)
    assert same["extra_tail"] == ((9, 9), 1)
    # [7] and [7, 7] match nothing; neither fills a 4-token row.
    assert (same["unmatched"], same["at_max_len"], same["first_unmatched"]) == (2, 0, (7,))
    # Examples shorter than the lookup key (16 tokens by default) are matched all the same.
    assert pvt.compare_examples(examples, pvt.split_examples(peer, "seq_lengths"), max_len=4) == same
    # A different loss mask on equal ids is counted apart; a peer example filling the row is "truncated".
    other = pvt.compare_examples(
        examples, [((1, 2, 3), (True, True, True)), ((8, 8, 8, 8), (True,) * 4)], 1, 4
    )
    assert (other["same_ids"], other["same_mask"], other["unmatched"], other["at_max_len"]) == (1, 0, 1, 1)
    assert other["first_unmatched"] is None


def test_pack_efficiency_and_position_restarts():
    packs = [
        {"input_ids": [0] * 5, "seq_lens": [3, 2], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [0] * 3, "seq_lens": [3], "position_ids": [0, 1, 2]},
    ]
    assert pvt.efficiency(packs, 8) == pytest.approx(8 / 16)
    assert pvt.positions_restart(packs)
    packs[0]["position_ids"] = [0, 1, 2, 3, 4]  # one sequence: the second example would see the first
    assert not pvt.positions_restart(packs)


def test_pack_input_is_what_both_sides_read(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_bytes(
        b"".join(
            orjson.dumps({"id": f"r{i}", "question": f"q{i}", "solution": f"s{i}", "answer": "1"}) + b"\n"
            for i in range(5)
        )
    )
    assert pvt.prepare_input(src, tmp_path / "in.jsonl", limit=3) == 3
    assert _read(tmp_path / "in.jsonl") == [
        {"id": f"r{i}", "question": f"q{i}", "solution": f"s{i}"} for i in range(3)
    ]


def test_pack_trl_side_writes_packs_with_seq_lengths(tmp_path):
    _needs("trl")
    tokenizer = SHARED_DATA / "tokenizers" / "llama-3-8b-instruct"
    if not tokenizer.exists():
        pytest.skip(f"no Llama-3 tokenizer at {tokenizer}")
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"".join(
            orjson.dumps({"id": str(i), "question": f"What is {i}+1?", "solution": f"{i + 1}"}) + b"\n"
            for i in range(4)
        )
    )
    pvt.run_trl(str(src), str(tmp_path / "trl.jsonl.zst"), str(tokenizer), max_len=64, workers=1)
    packs = _read(tmp_path / "trl.jsonl.zst")
    assert sum(len(p["seq_lengths"]) for p in packs) == 4
    assert all(sum(p["seq_lengths"]) == len(p["input_ids"]) <= 64 for p in packs)


# --- score ----------------------------------------------------------------------------------------


def test_score_near_misses():
    assert svr.bump_first_integer("\\frac{7}{5} + \\frac{1}{5} i") == "\\frac{8}{5} + \\frac{1}{5} i"
    assert svr.bump_first_integer("\\pi") is None
    math = svr.math_records(
        [{"id": "m1", "question": "q", "answer": "12"}, {"id": "m2", "question": "q", "answer": "\\pi"}]
    )
    assert [r["samples"] for r in math] == [["\\boxed{12}", "\\boxed{13}"], ["\\boxed{\\pi}"]]
    gsm = svr.gsm8k_records(
        [{"id": "g", "question": "q", "answer": "1,200", "solution": "So 1200.\n#### 1,200"}]
    )
    assert gsm[0]["samples"] == [
        "So 1200.\n#### 1,200",
        "So 1200.\n#### 1201",
        "So 1200.\nThe answer is 1,200.",
    ]


def test_score_disagreements_point_at_the_sample():
    records = [{"id": "a", "samples": ["x", "y"]}, {"id": "b", "samples": ["z"]}]
    assert svr.disagreements([True, False, True], [True, True, False], records) == (
        2,
        [("a", "y", False, True), ("b", "z", True, False)],
    )
    with pytest.raises(ValueError):
        svr.disagreements([True], [True, False, True], records)


def test_score_codeplan_side_gives_the_built_verdicts(tmp_path):
    """Through the real command: the gold solution and its 'The answer is N' twin are right, the
    `#### N+1` twin wrong; the boxed MATH gold right, its near miss wrong."""
    gsm = svr.gsm8k_records([{"id": "g", "question": "q", "answer": "72", "solution": "48+24=72\n#### 72"}])
    math = svr.math_records([{"id": "m", "question": "q", "answer": "\\frac{1}{2}"}])
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in gsm + math))
    subprocess.run(
        [*CODEPLAN, "score", "-q", "--no-progress", "--workers", "1", "-i", str(src), "-o", str(out)],
        check=True,
    )
    verdicts = svr.codeplan_verdicts(_read(out))
    assert verdicts["lenient"] == [True, False, True, True, False]
    assert verdicts["strict"][:2] == [True, False]


def test_score_math_verify_reference(tmp_path):
    _needs("math_verify")
    records = svr.math_records([{"id": "m", "question": "q", "answer": "\\frac{1}{2}"}])
    src, out = tmp_path / "in.jsonl", tmp_path / "ref.json"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    svr.run_math_verify(str(src), str(out))
    assert orjson.loads(out.read_bytes()) == {"verdict": [True, False]}


def test_score_lm_eval_reference(tmp_path):
    _needs("lm_eval")
    records = svr.gsm8k_records(
        [{"id": "g", "question": "q", "answer": "72", "solution": "48+24=72\n#### 72"}]
    )
    src, out = tmp_path / "in.jsonl", tmp_path / "ref.json"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    svr.run_lm_eval(str(src), str(out))
    # strict-match needs '#### N'; flexible-extract takes the last number.
    assert orjson.loads(out.read_bytes()) == {
        "strict-match": [True, False, False],
        "flexible-extract": [True, False, True],
    }
