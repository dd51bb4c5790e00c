"""Fields of the wrong JSON type: a bad record naming the field and its type, never a crash (exit 70)
or a silent fallback; and record text holding special-token strings stays text in packs."""

from __future__ import annotations

import orjson
import pytest

from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.records import WrongType
from codeplan_tools.core.stage import StageContext
from codeplan_tools.eval.report import score_type_error
from codeplan_tools.formats import get_format
from codeplan_tools.stages.filter import FilterConfig, check_record, filter_records, rule_checks
from codeplan_tools.stages.pack import Encoder, PackConfig, RecordTokenizer, pack_records
from codeplan_tools.stages.score import ScoreConfig, sample_texts, score_records
from tests.helpers import invoke, read_records, write_jsonl

PLAN = "total = 0\nfor x in numbers:\n    total += x\nprint(total)"
GOOD = {"prompt": "Add the numbers.", "plan": PLAN, "response": "The total is 6."}
TYPES = {"an object": {"a": 1}, "a list": [1, 2], "a string": "x", "a number": 5, "true/false": True}


def _with(base: dict, path: str, value) -> dict:
    record = orjson.loads(orjson.dumps(base))
    *parents, last = path.split(".")
    cur = record
    for key in parents:
        cur = cur.setdefault(key, {})
    cur[last] = value
    return record


# -- filter -------------------------------------------------------------------------------------
FILTER_FIELDS = {  # field -> the type a rule expects
    "meta": "an object",
    "meta.extract": "an object",
    "meta.extract.finish_reason": "a string",
    "meta.extract.tokens_out": "an integer",
    "response": "a string",
}


WRONG_TYPED = [
    (field, kind)
    for field, expected in FILTER_FIELDS.items()
    for kind in TYPES
    if kind != expected and not (expected == "an integer" and kind == "a number")
]


@pytest.mark.parametrize("field, kind", WRONG_TYPED)
def test_filter_rules_name_a_wrong_typed_field(field, kind):
    config = FilterConfig(max_plan_tokens=100)
    checks = rule_checks(config)
    record = _with(GOOD, field, TYPES[kind])
    with pytest.raises(WrongType) as caught:
        check_record(record, config, checks)
    assert str(caught.value) == f"{field} is {kind}, not {FILTER_FIELDS[field]}"


def test_filter_skip_rejects_each_wrong_type_and_keeps_the_rest():
    records = [
        dict(GOOD, id="ok1"),
        _with(dict(GOOD, id="m"), "meta", "mined by hand"),
        _with(dict(GOOD, id="e"), "meta.extract", [1]),
        _with(dict(GOOD, id="r", prompt="Another prompt"), "response", {"text": "x"}),
        dict(GOOD, id="ok2", prompt="A third prompt"),
    ]
    ctx = StageContext("filter", on_bad_record="skip")
    kept = list(filter_records(records, FilterConfig(), ctx))
    assert [r["id"] for r in kept] == ["ok1", "ok2"]
    rejected = [(r["line"], r["meta"]["filter"]) for r in ctx.rejected]
    assert [meta.pop("reason") for _, meta in rejected] == [
        "bad-record: meta is a string, not an object",
        "bad-record: meta.extract is a list, not an object",
        "bad-record: response is an object, not a string",
    ]
    # Rejected as the reader rejects a bad line: the line as read, file and line (here: the position
    # in the input, as no reader gives one). The user's own meta is kept as it was.
    assert orjson.loads(rejected[0][0])["meta"] == "mined by hand"
    assert [meta for _, meta in rejected] == [{"file": "<records>", "line": n} for n in (2, 3, 4)]
    assert ctx.stats["bad_records"] == 3
    with pytest.raises(BadRecord, match="<records>:2: meta is a string"):
        list(filter_records(records, FilterConfig()))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_filter_command_wrong_type_exits_65_at_its_line_or_is_skipped(tmp_path, workers):
    records = [dict(GOOD, id=f"g{i}", prompt=f"Prompt {i}") for i in range(1500)]
    records[1203] = _with(records[1203], "meta.extract", "stop")
    path = write_jsonl(tmp_path / "in.jsonl", records)
    result = invoke(["filter", "-i", str(path), "--plain", "--workers", workers])
    assert result.exit_code == 65, result.stderr
    assert result.stderr.strip().endswith(f"{path}:1204: meta.extract is a string, not an object")
    assert len(result.stderr.strip().splitlines()) == 1
    rejects = tmp_path / "rejects.jsonl"
    skipped = invoke(
        [
            "filter",
            "-i",
            str(path),
            "--plain",
            "--workers",
            workers,
            "--on-bad-record",
            "skip",
            "--rejects",
            str(rejects),
        ]
    )
    assert skipped.exit_code == 0, skipped.stderr
    assert len(skipped.records()) == 1499
    (rejected,) = read_records(rejects)
    assert orjson.loads(rejected["line"])["id"] == "g1203"
    assert rejected["meta"]["filter"] == {
        "file": str(path),
        "line": 1204,
        "reason": "bad-record: meta.extract is a string, not an object",
    }


# -- score --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "samples, message",
    [
        ({"response": "4"}, "samples is an object, not a list"),
        ("The answer is 4.", "samples is a string, not a list"),
        ([1, 2], "samples[0] is a number, not an object or a string"),
        ([{"response": ["4"]}], "samples[0].response is a list, not a string"),
        ([{"text": 4}], "samples[0].text is a number, not a string"),
    ],
)
def test_wrong_typed_samples_are_bad_records_not_the_gold_response(samples, message):
    record = {"id": "a", "task": "gsm8k", "answer": "4", "response": "The answer is 4.", "samples": samples}
    with pytest.raises(WrongType) as caught:
        sample_texts(record)
    assert str(caught.value) == message
    ctx = StageContext("score", on_bad_record="skip")
    out = list(
        score_records(
            [record, {"id": "b", "task": "gsm8k", "answer": "4", "samples": ["4"]}],
            ScoreConfig(workers=1),
            ctx,
        )
    )
    assert [r["id"] for r in out] == ["b"] and out[0]["meta"]["score"]["correct"] is True
    (line,) = ctx.rejected
    assert orjson.loads(line["line"])["samples"] == samples  # rejected as read, not scored
    assert line["meta"]["score"] == {"file": "<records>", "line": 1, "reason": f"bad-record: {message}"}
    assert ctx.stats["bad_records"] == 1 and ctx.stats["records_scored"] == 1


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("task", ["gsm8k"], "bad-record: task is a list, not a string"),
        ("meta", "notes", "bad-record: meta is a string, not an object"),
        ("answer", [4], "no-gold"),
        ("answer", {"value": 4}, "no-gold"),
    ],
)
def test_score_names_wrong_typed_task_meta_and_answer(field, value, reason):
    record = _with({"id": "a", "task": "gsm8k", "answer": "4", "samples": ["4"]}, field, value)
    ctx = StageContext("score", on_bad_record="skip")
    out = list(score_records([record], ScoreConfig(workers=1), ctx))
    rejected = [(r["meta"]["score"]["reason"], r["meta"]["score"].get("detail")) for r in ctx.rejected]
    assert out == [] and rejected[0][0] == reason
    if reason == "no-gold":
        assert (
            rejected[0][1]
            == f"'answer' is {'a list' if isinstance(value, list) else 'an object'}, not a string"
        )


def test_a_number_is_still_a_numeric_gold_answer():
    out = list(score_records([{"task": "gsm8k", "answer": 18, "samples": ["18"]}], ScoreConfig()))
    assert out[0]["meta"]["score"]["correct"] is True


def test_scored_records_with_wrong_typed_meta_score_are_named():
    assert score_type_error({"task": "gsm8k", "n": 1, "accuracy": 1.0}) is None
    assert score_type_error({"task": ["gsm8k"]}) == "meta.score.task is a list, not a string"
    assert (
        score_type_error({"task": "t", "accuracy": "high"}) == "meta.score.accuracy is a string, not a number"
    )
    assert "meta.score.pass@k" in score_type_error({"task": "t", "pass@k": {"one": 0.5}})


# -- pack: special-token strings in record text -------------------------------------------------
def test_special_token_strings_in_a_record_stay_text_and_template_tokens_stay_special(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    fmt = get_format("codeplan", tokenizer)
    encoder = Encoder(PackConfig(model=str(tiny_model), max_len=512), tokenizer)
    specials = {tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<s>", "</s>")}
    ordinary = ("What is 2 + 2?", "x = 2 + 2", "It is 4.")
    tricky = ("Say <|assistant|> and <s>hi", "x = '<|user|>'", "Done <|system|> here.")
    (ids_plain, _), (ids_tricky, n_prompt) = encoder.encode([ordinary, tricky])

    def special_count(ids):
        return sum(int(i) in specials for i in ids)

    # The template's own tokens (BOS, user, end, assistant; the end marker) are the only special ones.
    assert special_count(ids_tricky) == special_count(ids_plain) == 5
    prompt_text, target_text = fmt.render(tokenizer, *tricky)
    assert tokenizer.decode(ids_tricky.tolist()) == prompt_text + target_text
    assert tokenizer.decode(ids_tricky[:n_prompt].tolist()) == prompt_text
    # Ordinary records: exactly the ids of tokenizing the rendering as before.
    p, t = fmt.render(tokenizer, *ordinary)
    before = (
        tokenizer(p, add_special_tokens=False)["input_ids"]
        + tokenizer(t, add_special_tokens=False)["input_ids"]
    )
    assert ids_plain.tolist() == before
    # generate conditions on the same prompt ids.
    assert RecordTokenizer(tokenizer, fmt).prompt_ids(tricky[0]) == ids_tricky[:n_prompt].tolist()


@pytest.mark.parametrize("name", ["llama-3-8b-instruct", "qwen2.5-instruct", "mistral-7b-v0.1"])
def test_real_tokenizers_keep_ordinary_ids_and_text_specials(shared_data, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / name)
    fmt = get_format("vanilla", tokenizer)
    records = RecordTokenizer(tokenizer, fmt)
    texts = ["Hello there, how are you?", "  spaced\n\nlines\tand tabs ", "naïve café 日本語"]
    for text in texts:
        rendered = fmt.prompt_text(tokenizer, text)
        add = not (tokenizer.bos_token and rendered.startswith(tokenizer.bos_token))
        assert records.prompt_ids(text) == tokenizer(rendered, add_special_tokens=add)["input_ids"]
    special_ids = {i for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)}
    special_ids |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    inside = next(t for t in tokenizer.all_special_tokens if t != fmt.end_marker)
    response = f"before {inside} after"
    ids = records.target_ids(None, response)
    # Only the end marker, last, is special; the same string inside the response is text.
    assert (
        [i for i in ids if i in special_ids]
        == [ids[-1]]
        == tokenizer.encode(fmt.end_marker, add_special_tokens=False)
    )
    assert tokenizer.decode(ids) == fmt.target_text(None, response)


# -- pack: over-long by characters --------------------------------------------------------------
def _examples(packs: list[dict]) -> dict[str, list[int]]:
    """Example id -> its token ids, cut out of the packs at seq_lens."""
    out = {}
    for pack in packs:
        start = 0
        for example_id, n in zip(pack["example_ids"], pack["seq_lens"], strict=True):
            out[example_id] = list(pack["input_ids"][start : start + n])
            start += n
    return out


def test_a_huge_record_is_dropped_before_tokenizing_and_truncate_split_stay_exact(tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    big = {"id": "big", "prompt": "Q?", "plan": "x = 1", "response": "word " * 40_000}
    small = {"id": "small", "prompt": "Q?", "plan": "x = 1", "response": "ok"}
    config = PackConfig(model=str(tiny_model), max_len=64)
    encoder = Encoder(config, tokenizer)
    assert len(big["response"]) > encoder.max_chars
    tokenized: list[int] = []  # characters handed to the tokenizer per call

    def spy(cls, name, size):
        original = getattr(cls, name)

        def wrapper(self, text, *args, **kwargs):
            tokenized.append(size(text))
            return original(self, text, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy(Encoder, "_ids", lambda texts: sum(map(len, texts)))
    spy(RecordTokenizer, "_encode", len)
    from codeplan_tools.core.stage import StageContext

    ctx = StageContext("pack")
    packs = list(pack_records([big, small], config, ctx, tokenizer=tokenizer))
    stats = ctx.stats
    assert [p["example_ids"] for p in packs] == [["small"]]
    assert [(r["id"], r["meta"]["pack"]) for r in ctx.rejected] == [
        (
            "big",
            {
                "max_len": 64,
                "chars": len("".join(encoder.format.render(tokenizer, "Q?", "x = 1", big["response"]))),
                "reason": "overlong",
            },
        )
    ]
    assert stats["overlong_dropped"] == stats["overlong"] == 1
    assert tokenized and max(tokenized) < 100  # the small record only: the big one never reached it
    # truncate and split: the same tokens as tokenizing the whole rendering, in bounded pieces.
    tokenized.clear()
    fmt = encoder.format
    whole = (
        tokenizer(fmt.prompt_text(tokenizer, "Q?"), add_special_tokens=False)["input_ids"]
        + tokenizer(fmt.target_text("x = 1", big["response"]), add_special_tokens=False)["input_ids"]
    )
    truncated = _examples(
        list(
            pack_records(
                [big], PackConfig(model=str(tiny_model), max_len=64, overlong="truncate"), tokenizer=tokenizer
            )
        )
    )
    assert truncated == {"big": whole[:64]}
    split = _examples(
        list(
            pack_records(
                [big], PackConfig(model=str(tiny_model), max_len=64, overlong="split"), tokenizer=tokenizer
            )
        )
    )
    assert [x for k in range(len(split)) for x in split[f"big#{k}"]] == whole
    assert max(tokenized) <= encoder.max_chars < len(big["response"])
