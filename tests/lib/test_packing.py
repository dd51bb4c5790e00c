"""Packing: the loss mask against the format's rendering, bin packing, over-long rows, fingerprints."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.records import normalize
from codeplan_tools.core.stage import StageContext
from codeplan_tools.core.streams import read_records
from codeplan_tools.formats import get_format
from codeplan_tools.stages.pack import (
    IGNORE,
    PackConfig,
    best_fit_decreasing,
    derived_stats,
    pack_records,
    tokenizer_fingerprint,
)

PLAN = "total = 0\nfor x in numbers:\n    total += x\nprint(total)"
TOKENIZERS = ["llama-3-8b-instruct", "qwen2.5-instruct", "mistral-7b-v0.1"]


@pytest.fixture(scope="module")
def tokenizers(shared_data):
    """Each real tokenizer, loaded once for the module."""
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(shared_data / "tokenizers" / name) for name in TOKENIZERS}


def gsm8k(shared_data, n: int, with_plan: bool = True) -> list[dict]:
    out = []
    for i, r in enumerate(read_records([str(shared_data / "gsm8k" / "train.jsonl.zst")])):
        if i >= n:
            break
        normalize(r)
        if with_plan:
            r["plan"] = PLAN
        out.append(r)
    return out


def examples_of(pack: dict):
    """(ids, labels, position_ids) of each example of a pack, cut at seq_lens."""
    start = 0
    for n in pack["seq_lens"]:
        sl = slice(start, start + n)
        yield pack["input_ids"][sl], pack["labels"][sl], pack["position_ids"][sl]
        start += n


# -- bin packing --------------------------------------------------------------------------------
def test_best_fit_decreasing_fills_bins_and_places_every_item_once():
    assert best_fit_decreasing([6, 4, 5, 5, 3, 7], 10) == [[4, 5], [0, 1], [2, 3]]
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # BFD's bound: at most 11/9 OPT + 1 bins, and OPT >= total / capacity.
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128) + 2
    assert best_fit_decreasing(lengths, 128) == bins  # deterministic


# -- the loss mask on real tokenizers -------------------------------------------------------------
@pytest.mark.parametrize("name", TOKENIZERS)
def test_labels_mask_exactly_the_prompt_tokens(shared_data, tokenizers, name):
    model = str(shared_data / "tokenizers" / name)
    tok = tokenizers[name]
    records = gsm8k(shared_data, 12)
    ctx = StageContext("pack")
    packs = list(pack_records(records, PackConfig(model=model, max_len=1024, workers=1), ctx, tokenizer=tok))
    stats = ctx.stats
    fmt = get_format("codeplan", tok)
    assert fmt.chat == (name != "mistral-7b-v0.1")  # Mistral-7B-v0.1 has no chat template: plain template
    by_id = {r["id"]: r for r in records}
    seen = 0
    for pack in packs:
        assert pack["fingerprint"] == packs[0]["fingerprint"]
        assert sum(pack["seq_lens"]) == len(pack["input_ids"]) <= 1024
        for (ids, labels, pos), ex_id in zip(examples_of(pack), pack["example_ids"], strict=True):
            rec = by_id[ex_id]
            prompt_text, target_text = fmt.render(tok, rec["prompt"], rec["plan"], rec["response"])
            in_text_bos = bool(tok.bos_token) and prompt_text.startswith(tok.bos_token)
            prompt_ids = tok(prompt_text, add_special_tokens=not in_text_bos)["input_ids"]
            n = len(prompt_ids)
            assert list(ids[:n]) == prompt_ids
            # Token by token: no loss on each prompt token, the token itself as label on every target token.
            assert list(labels[:n]) == [IGNORE] * n
            assert list(labels[n:]) == list(ids[n:]) and len(ids) > n
            assert tok.decode(ids[n:]) == target_text
            assert ids[-1] == fmt.end_token_id(tok)  # the end marker is the last trained token
            assert list(pos) == list(range(len(ids)))
            seen += 1
            if tok.bos_token_id is not None:
                assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, never two
    assert seen == 12 == stats["examples_packed"]
    assert stats["loss_tokens"] == sum(int((np.asarray(p["labels"]) != IGNORE).sum()) for p in packs)


def test_loss_all_trains_on_every_token(shared_data, tokenizers):
    model = str(shared_data / "tokenizers" / "qwen2.5-instruct")
    cfg = PackConfig(model=model, loss="all", max_len=4096, workers=1)
    packs = list(pack_records(gsm8k(shared_data, 4), cfg, tokenizer=tokenizers["qwen2.5-instruct"]))
    for pack in packs:
        assert list(pack["labels"]) == list(pack["input_ids"])
        assert pack["fingerprint"]["loss"] == "all"


def test_gsm8k_packs_at_least_97_percent_full_with_llama3(shared_data, tokenizers):
    model = str(shared_data / "tokenizers" / "llama-3-8b-instruct")
    ctx = StageContext("pack")
    records = gsm8k(shared_data, 2000, with_plan=False)
    cfg = PackConfig(model=model, format="vanilla", max_len=2048, workers=1)
    packs = list(pack_records(records, cfg, ctx, tokenizer=tokenizers["llama-3-8b-instruct"]))
    stats = ctx.stats
    eff = derived_stats(stats)["packing_efficiency"]
    assert eff == pytest.approx(sum(len(p["input_ids"]) for p in packs) / (2048 * len(packs)))
    assert eff >= 0.97
    assert stats["examples_packed"] == 2000 and stats["tokens"] > stats["loss_tokens"] > 0


# -- over-long rows -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["drop", "truncate", "split"])
def test_overlong_rows_are_dropped_truncated_or_split_and_counted(tiny_model, mode):
    long = {"id": "long", "prompt": "Q?", "plan": "x = 1", "response": "word " * 300}
    short = {"id": "short", "prompt": "Q?", "plan": "x = 1", "response": "ok"}
    ctx = StageContext("pack")
    cfg = PackConfig(model=str(tiny_model), max_len=128, overlong=mode, workers=1)
    packs = list(pack_records([long, short], cfg, ctx))
    stats = ctx.stats
    rejected = [(r["id"], r["meta"]["pack"]["reason"]) for r in ctx.rejected]
    ids = [i for p in packs for i in p["example_ids"]]
    assert (
        stats["overlong"] == 1
        and stats[
            {"drop": "overlong_dropped", "truncate": "overlong_truncated", "split": "overlong_split"}[mode]
        ]
        == 1
    )
    assert all(len(p["input_ids"]) <= 128 for p in packs)
    if mode == "drop":
        assert ids == ["short"] and rejected == [("long", "overlong")]
        assert stats["rejected"] == stats["rejected.overlong"] == 1
    elif mode == "truncate":
        assert sorted(ids) == ["long", "short"] and not rejected
        assert (
            max(p["seq_lens"][p["example_ids"].index("long")] for p in packs if "long" in p["example_ids"])
            == 128
        )
    else:
        pieces = sorted(i for i in ids if i.startswith("long#"))
        assert len(pieces) == stats["split_pieces"] - stats["split_pieces_dropped_no_loss"] >= 2
        for p in packs:  # every piece restarts its positions at 0
            for _ids, _labels, pos in examples_of(p):
                assert pos[0] == 0


def test_unrenderable_rows_are_rejected_with_the_format_reason(tiny_model):
    ctx = StageContext("pack")
    bad = {"id": "b", "prompt": "Q?", "plan": "x\n```\n\n### Answer:\nsneaky", "response": "r"}
    good = {"id": "g", "prompt": "Q?", "plan": "x = 1", "response": "r"}
    packs = list(pack_records([bad, good], PackConfig(model=str(tiny_model), workers=1), ctx))
    assert [i for p in packs for i in p["example_ids"]] == ["g"]
    assert [r["meta"]["pack"]["reason"] for r in ctx.rejected] == ["plan-contains-separator"]
    assert ctx.stats["rejected.plan-contains-separator"] == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss": "prompt"}, "--loss must be one of assistant, all, not 'prompt'"),
        ({"overlong": "wrap"}, "--overlong must be one of drop, truncate, split, not 'wrap'"),
        ({"template": "chatml"}, "--template must be one of auto, chat, plain, not 'chatml'"),
        ({"max_len": 1}, "--max-len must be at least 2"),
        ({"buffer": 0}, "--buffer and the chunk size must be at least 1"),
        ({"chunk": 0}, "--buffer and the chunk size must be at least 1"),
    ],
)
def test_config_refuses(settings, message):
    with pytest.raises(UsageError) as caught:
        PackConfig(model="m", **settings)
    assert str(caught.value) == message


@pytest.mark.parametrize("template, chat", [("auto", None), ("chat", True), ("plain", False)])
def test_template_chooses_the_chat_or_plain_rendering(template, chat):
    assert PackConfig(model="m", template=template).chat is chat


# -- fingerprint ----------------------------------------------------------------------------------
def test_tokenizer_fingerprint_follows_the_tokenizer_files(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(tiny_model)
    (copy / "model.safetensors").unlink()  # weights are not part of it
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(tiny_model)
    path = copy / "tokenizer_config.json"
    path.write_text(path.read_text().replace("}", ', "x": 1}', 1))
    assert tokenizer_fingerprint(copy) != tokenizer_fingerprint(tiny_model)
