"""`pack` writes the same bytes as before its tokenizer fast path (issues 17 and 24).

The digests below are SHA-256 of the packs file and of the rejects file that the code before the fast
path wrote (transformers' ``AutoTokenizer`` and ``apply_chat_template``) for the same inputs and
settings. They cover the three formats, chat and plain templates, loss on the assistant turn or on
everything, the three ``--overlong`` modes (with a row long enough to truncate and split, and one longer
than ``max_chars`` so it is cut or tokenized in pieces before tokenizing), rows whose text holds
special-token strings, rows the format rejects, and the chat templates shipped beside the real
tokenizers (``chat_template.*.jinja``, installed as the folder's ``chat_template.jinja``).

To recompute the table with other code on the path (for instance a pristine copy of an older commit):
``PYTHONPATH=/tmp/pack-base .venv/bin/python tests/lib/test_pack_identical.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Special-token strings of the tokenizers below, put into records' text: they must stay text.
SPECIAL_STRINGS = [
    "<s>",
    "</s>",
    "<unk>",
    "<|user|>",
    "<|assistant|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<tool_call>",
    "[INST]",
    "<|end|>",
]
PLAN = "total = 0\nfor x in numbers:\n    total += x\nprint(total)"

# (name, format, template, loss, overlong, max_len): template None = the tokenizer's default.
CONFIGS = [
    ("vanilla-auto", "vanilla", "auto", "assistant", "drop", 256),
    ("codeplan-auto-split", "codeplan", "auto", "assistant", "split", 48),
    ("nlplan-plain-truncate-all", "nlplan", "plain", "all", "truncate", 64),
    ("codeplan-plain-drop", "codeplan", "plain", "assistant", "drop", 128),
    ("vanilla-auto-truncate-tiny", "vanilla", "auto", "assistant", "truncate", 8),
    ("nlplan-auto-split-tiny", "nlplan", "auto", "assistant", "split", 8),
]


def records() -> list[dict]:
    """Deterministic records: ordinary, whitespace and unicode, special-token strings, rows the formats
    reject, and long ones."""
    rows = []
    for i in range(24):
        a, b = 3 * i + 1, 7 * i + 2
        rows.append(
            {
                "id": f"q{i}",
                "prompt": f"Alice has {a} apples and buys {b} more. How many apples does she have?",
                "plan": f"apples = {a}\napples += {b}\nprint(apples)",
                "response": f"She has {a} + {b} = {a + b} apples.\n#### {a + b}",
            }
        )
    rows.append({"id": "ws", "prompt": "  padded prompt \n\n", "plan": " x = 1 ", "response": "\tok \n"})
    rows.append(
        {"id": "uni", "prompt": "Ünïcödé 😀 中文  double  spaces", "plan": "π = 3.14", "response": "ça va 🙂"}
    )
    rows.append({"id": "empty-response", "prompt": "Say nothing.", "plan": "pass", "response": ""})
    for k, s in enumerate(SPECIAL_STRINGS):
        rows.append(
            {"id": f"sp-p{k}", "prompt": f"What does {s} mean?{s}", "plan": PLAN, "response": "A marker."}
        )
        rows.append(
            {"id": f"sp-r{k}", "prompt": "Explain.", "plan": f"print('{s}')", "response": f"It is {s} ok"}
        )
    rows.append({"id": "sep", "prompt": "Q", "plan": "a\n```\n\n### Answer:\nb", "response": "r"})
    rows.append({"id": "sep-nl", "prompt": "Q", "plan": "a\n\n### Answer:\nb", "response": "r"})
    long_text = " ".join(f"word{j % 97} and {j}," for j in range(400))
    rows.append({"id": "long", "prompt": long_text, "plan": PLAN, "response": long_text})
    huge = " ".join(f"w{j % 113}" for j in range(9000))  # longer than max_chars at max_len 8
    rows.append({"id": "huge", "prompt": "Summarise.", "plan": PLAN, "response": huge})
    rows.append(
        {"id": "huge-special", "prompt": huge[:20000] + "<|eot_id|></s>", "plan": PLAN, "response": "ok"}
    )
    return rows


def make_model(source: Path, folder: Path, template_file: str | None) -> Path:
    """A copy of the tokenizer folder ``source``, with ``template_file`` (a jinja file beside it) as its
    chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.startswith("chat_template."):
            shutil.copyfile(f, folder / f.name)
    if template_file:
        shutil.copyfile(source / template_file, folder / "chat_template.jinja")
    return folder


def pack_digests(
    model: Path, work: Path, configs=CONFIGS, workers: int = 1, chunk: int = 16
) -> dict[str, str]:
    """sha256 of packs + rejects for each config over :func:`records` (through ``run_stage``, as the CLI)."""
    from codeplan_tools.core.stage import StageIO, run_stage
    from codeplan_tools.stages.pack import PackConfig, PackStage

    work.mkdir(parents=True, exist_ok=True)
    data = work / "in.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records()))
    out = {}
    for name, fmt, template, loss, overlong, max_len in configs:
        cfg = PackConfig(
            model=str(model),
            format=fmt,
            template=template,
            loss=loss,
            overlong=overlong,
            max_len=max_len,
            workers=workers,
            chunk=chunk,
        )
        stage = PackStage(cfg)
        packs, rejects = work / f"{name}.jsonl", work / f"{name}.rejects.jsonl"
        for p in (packs, rejects):
            p.unlink(missing_ok=True)
        io = StageIO(
            "pack",
            inputs=[str(data)],
            output=str(packs),
            rejects=str(rejects),
            require=stage.require,
            progress=False,
            quiet=True,
        )
        try:
            run_stage(io, stage)
        except Exception as exc:  # a template that cannot render a format: the error is the result
            out[name] = f"error: {type(exc).__name__}"
            continue
        h = hashlib.sha256(packs.read_bytes())
        h.update(b"\0rejects\0" + rejects.read_bytes())
        out[name] = h.hexdigest()[:32]
    return out


# Real tokenizer folders of ../shared/data/tokenizers and the jinja template installed in each copy.
REAL_CASES = [
    ("llama-3-8b-instruct", None),
    ("llama-3-8b-instruct", "chat_template.trl-llama3.jinja"),
    ("qwen2.5-instruct", None),
    ("mistral-7b-v0.1", None),
    ("mistral-7b-v0.1", "chat_template.mistral-7b-instruct-v0.1.jinja"),
    ("llama-2-7b", None),
    ("llama-2-7b", "chat_template.transformers-default-llama.jinja"),
]

# Computed with the code before the fast path (see the module docstring).
EXPECTED: dict[str, dict[str, str]] = {
    "tiny": {
        "vanilla-auto": "a2a780e0e4a2676523acf5b0cf26b65b",
        "codeplan-auto-split": "380fc06a2a72063756f66459e6e00088",
        "nlplan-plain-truncate-all": "eb26d2ffe41e376829717ce905e4c280",
        "codeplan-plain-drop": "e8a08d58c62260cb033cea119861c197",
        "vanilla-auto-truncate-tiny": "4e69eeed9b9782eb3eb6376cf689fb6b",
        "nlplan-auto-split-tiny": "0851b9a84b91a907cde87fa1aeeec428",
    },
    "llama-3-8b-instruct": {
        "vanilla-auto": "fe48bc731fefa615a7f3fbb13fbd0a7e",
        "codeplan-auto-split": "54e06b2aedf9fb6c8e7073629dd16da7",
        "nlplan-plain-truncate-all": "59a9b4a6f97c53b07e070e91d3af090e",
        "codeplan-plain-drop": "40f11bf73492fb17839c59dc0881fc16",
        "vanilla-auto-truncate-tiny": "501648f69d9cb91963ca271840ece136",
        "nlplan-auto-split-tiny": "0303ebfbc0a4c365806956fdcc2f64ac",
    },
    "llama-3-8b-instruct+chat_template.trl-llama3.jinja": {
        "vanilla-auto": "e2b34071770c0b8c9bfdace14c3c6989",
        "codeplan-auto-split": "1e1310720d38a14b692cde5cbf6833d2",
        "nlplan-plain-truncate-all": "3864d9ab9750705f4ee92ab9a6002576",
        "codeplan-plain-drop": "2f2f5e046cc26b5c17f470fc24345f48",
        "vanilla-auto-truncate-tiny": "501648f69d9cb91963ca271840ece136",
        "nlplan-auto-split-tiny": "ed7cb8f880ebc09bcb8c3c6a574bd98b",
    },
    "qwen2.5-instruct": {
        "vanilla-auto": "26110436bf404865663cab2e98b0953f",
        "codeplan-auto-split": "9f26f65cf2f2bfbb622e3afc8cc5a021",
        "nlplan-plain-truncate-all": "eca981622df904d9cfaf3cb66aeb5d78",
        "codeplan-plain-drop": "5d4cb9d46357c9dd6a718ab0826d6384",
        "vanilla-auto-truncate-tiny": "ad9edf745c180e43141a59104f8bff11",
        "nlplan-auto-split-tiny": "aaf7812c7ae6585f14ac1ec513501969",
    },
    "mistral-7b-v0.1": {
        "vanilla-auto": "c091b78977dba0e79ae93e9a69a112dd",
        "codeplan-auto-split": "b1f41877049b4f57f50dbe2973f2a4f9",
        "nlplan-plain-truncate-all": "ff9706ef332e087869729c5ad3bd27dd",
        "codeplan-plain-drop": "c729f4041c63be0319e80a4dac4592fc",
        "vanilla-auto-truncate-tiny": "7606e599e1422c88c5ffbaa3ac99521e",
        "nlplan-auto-split-tiny": "00d00aad723e413dbbcdd669918a7fb4",
    },
    "mistral-7b-v0.1+chat_template.mistral-7b-instruct-v0.1.jinja": {
        "vanilla-auto": "ec4c405c7674f7a154ff6655c7812217",
        "codeplan-auto-split": "3c61b45ab11cb65853cbd07b9382851b",
        "nlplan-plain-truncate-all": "125e9eb9363af07d236cb9f965ea8bd6",
        "codeplan-plain-drop": "bbb8b30cbb2ed9070704e9d0d9fc5800",
        "vanilla-auto-truncate-tiny": "589104cfd492580fafbae4c8ad1b0c40",
        "nlplan-auto-split-tiny": "65c42f80b4bacc14092392ef3904be9f",
    },
    "llama-2-7b": {
        "vanilla-auto": "0c9c53b14bab621710ecc1dc02327028",
        "codeplan-auto-split": "5ad2b670a5c62e1ee1e8a901a3ef8c3f",
        "nlplan-plain-truncate-all": "a51c988ee6706faa1507aa04753880ff",
        "codeplan-plain-drop": "3e6af4a10627e90188bf8171e274e61f",
        "vanilla-auto-truncate-tiny": "f5c3b34d9ca8e38cb64651e54b8dde0d",
        "nlplan-auto-split-tiny": "1a17f6256785b6033a7e99b207592541",
    },
    "llama-2-7b+chat_template.transformers-default-llama.jinja": {
        "vanilla-auto": "c4332220e11764f68d39510ec826cafd",
        "codeplan-auto-split": "3a553cdb05fb0cd0e789b8d0b7c8f32d",
        "nlplan-plain-truncate-all": "a38da61347618beb20f30c5664b1a61f",
        "codeplan-plain-drop": "0fa5452a351675704dc2a918783b1c1e",
        "vanilla-auto-truncate-tiny": "6e3baeddd65e2825e1fa16447de8d32a",
        "nlplan-auto-split-tiny": "087cac7bbb055706a64180949cfcab7b",
    },
}


def case_name(folder: str, template: str | None) -> str:
    return folder + (f"+{template}" if template else "")


def tiny_tokenizer_model(folder: Path) -> Path:
    """The tests' tiny model's tokenizer (``init_model``'s, trained here: deterministic)."""
    from codeplan_tools.tools.init_model import init_model
    from tests.fixtures.models import TINY_MODEL_SETTINGS

    return init_model(folder, init_range=0.3, **TINY_MODEL_SETTINGS)


def test_packs_of_the_tiny_tokenizer_are_unchanged(tiny_model, tmp_path):
    expected = EXPECTED["tiny"]
    assert pack_digests(tiny_model, tmp_path) == expected


@pytest.mark.parametrize("folder, template", REAL_CASES, ids=[case_name(*c) for c in REAL_CASES])
def test_packs_of_the_real_tokenizers_are_unchanged(shared_data, tmp_path, folder, template):
    model = make_model(shared_data / "tokenizers" / folder, tmp_path / "model", template)
    assert pack_digests(model, tmp_path / "work") == EXPECTED[case_name(folder, template)]


def main() -> None:
    """Print the digest table for the code on the path."""
    import tempfile

    shared = REPO.parent / "shared" / "data" / "tokenizers"
    import codeplan_tools

    print("code:", codeplan_tools.__file__, file=sys.stderr)
    table: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        table["tiny"] = pack_digests(tiny_tokenizer_model(Path(tmp) / "tiny"), Path(tmp) / "w-tiny")
        for folder, template in REAL_CASES:
            name = case_name(folder, template)
            model = make_model(shared / folder, Path(tmp) / name, template)
            table[name] = pack_digests(model, Path(tmp) / ("w-" + name))
            print(name, file=sys.stderr)
    print(json.dumps(table, indent=4))


if __name__ == "__main__":
    sys.path.append(str(REPO))  # after PYTHONPATH, so that the code under test is the one given there
    main()


def test_workers_write_the_same_packs(tiny_model, tmp_path):
    configs = [c for c in CONFIGS if c[0] in ("codeplan-auto-split", "nlplan-plain-truncate-all")]
    got = pack_digests(tiny_model, tmp_path, configs=configs, workers=2)
    assert got == {name: EXPECTED["tiny"][name] for name, *_ in configs}


def test_small_chunks_write_the_same_packs(tiny_model, tmp_path):
    """One record per worker task, and chunks of a few records in one process (many tokenizer calls in
    flight on the tokenizer thread, read out in order): the same bytes."""
    configs = [c for c in CONFIGS if c[0] in ("codeplan-auto-split", "vanilla-auto-truncate-tiny")]
    for workers in (1, 2):
        got = pack_digests(tiny_model, tmp_path / f"w{workers}", configs=configs, workers=workers, chunk=1)
        assert got == {name: EXPECTED["tiny"][name] for name, *_ in configs}, workers


@pytest.mark.parametrize("cpus", [1, 3])
def test_tokenizer_threads_write_the_same_packs(tiny_model, tmp_path, monkeypatch, cpus):
    """In one process, one tokenizer thread (one CPU: each call on the Rust tokenizer's own threads) or
    one per CPU (each chunk encoded by a thread of its own with the Rust threads off; the records with
    special-token text tokenized after those threads are done): the same bytes, and
    TOKENIZERS_PARALLELISM as it was before."""
    import os
    import threading

    from codeplan_tools.core import pool
    from codeplan_tools.stages import pack

    monkeypatch.setattr(pool, "usable_cpus", lambda: cpus)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    calls = []
    call_tokenizer = pack.Encoder.call_tokenizer

    def spy(self, prepared):
        calls.append(
            (threading.current_thread().name, os.environ["TOKENIZERS_PARALLELISM"], len(prepared.one))
        )
        return call_tokenizer(self, prepared)

    monkeypatch.setattr(pack.Encoder, "call_tokenizer", spy)
    configs = [c for c in CONFIGS if c[0] in ("codeplan-auto-split", "vanilla-auto-truncate-tiny")]
    got = pack_digests(tiny_model, tmp_path, configs=configs, workers=1, chunk=4)
    assert got == {name: EXPECTED["tiny"][name] for name, *_ in configs}
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    threads = {name for name, _, _ in calls}
    if cpus == 1:
        assert len(threads) == 1 and {env for _, env, _ in calls} == {"true"}
        assert sum(one for *_, one in calls) > 0  # the special-token rows, tokenized on that thread
    else:
        assert len(threads) == 3 and {env for _, env, _ in calls} == {"false"}
        assert sum(one for *_, one in calls) == 0  # left for after the threads


# -- the direct tokenizer against transformers' ----------------------------------------------------
TRICKY_TEXTS = [
    "plain words, numbers 12345 and punctuation!?",
    "  leading and trailing spaces  \n\n",
    "Ünïcödé 😀 中文\ttabs",
    "<s>special</s> strings <|user|> inside <|assistant|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "",
]


def assert_same_tokenizer(direct, reference) -> None:
    """The parts of the tokenizer API that pack, the formats and RecordTokenizer use, compared."""
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert getattr(direct, attr) == getattr(reference, attr), attr
    assert set(direct.all_special_tokens) == set(reference.all_special_tokens)
    assert direct.get_added_vocab() == reference.get_added_vocab()
    assert {i: (t.content, t.special) for i, t in direct.added_tokens_decoder.items()} == {
        i: (t.content, t.special) for i, t in reference.added_tokens_decoder.items()
    }
    assert direct.get_vocab() == reference.get_vocab()
    for text in TRICKY_TEXTS:
        for add in (True, False):
            for split in (True, False):
                kw = {"add_special_tokens": add, "split_special_tokens": split}
                assert direct(text, **kw)["input_ids"] == reference(text, **kw)["input_ids"], (text, kw)
    assert direct(TRICKY_TEXTS)["input_ids"] == reference(TRICKY_TEXTS)["input_ids"]
    if reference.chat_template:
        for agp in (True, False):
            conv = [{"role": "user", "content": " Hi <s> there "}, {"role": "assistant", "content": "Yes."}]
            conv = conv[:1] if agp else conv
            kw = {"tokenize": False, "add_generation_prompt": agp}
            assert direct.apply_chat_template(conv, **kw) == reference.apply_chat_template(conv, **kw)


def test_the_tiny_tokenizer_loads_without_transformers_and_agrees_with_it(tiny_model):
    from transformers import AutoTokenizer

    from codeplan_tools.formats.tokenizer import DirectTokenizer, load_pack_tokenizer

    direct = load_pack_tokenizer(str(tiny_model))
    assert isinstance(direct, DirectTokenizer)
    assert_same_tokenizer(direct, AutoTokenizer.from_pretrained(tiny_model))


def test_pack_does_not_import_transformers_for_a_tokenizer_json(tiny_model, tmp_path):
    """Start-up: the fast path loads neither transformers nor torch (seconds)."""
    import subprocess

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(records()[0]) + "\n")
    code = (
        "import sys\n"
        "from codeplan_tools.core.stage import StageIO, run_stage\n"
        "from codeplan_tools.stages.pack import PackConfig, PackStage\n"
        f"stage = PackStage(PackConfig(model={str(tiny_model)!r}))\n"
        f"io = StageIO('pack', inputs=[{str(src)!r}], output={str(tmp_path / 'out.jsonl')!r},"
        " require=stage.require, progress=False, quiet=True)\n"
        "run_stage(io, stage)\n"
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize(
    "folder", ["llama-3-8b-instruct", "qwen2.5-instruct", "mistral-7b-v0.1", "llama-2-7b"]
)
def test_real_tokenizers_load_directly_only_where_transformers_keeps_tokenizer_json(shared_data, folder):
    """Llama-3's tokenizer.json is used as it is; the others' classes rebuild parts of it (or there is none),
    so they load through transformers, and either way agree with it."""
    from transformers import AutoTokenizer

    from codeplan_tools.formats.tokenizer import DirectTokenizer, load_pack_tokenizer

    path = shared_data / "tokenizers" / folder
    tok = load_pack_tokenizer(str(path))
    assert isinstance(tok, DirectTokenizer) == (folder == "llama-3-8b-instruct")
    assert_same_tokenizer(tok, AutoTokenizer.from_pretrained(path))


# Golden targets that transformers itself does not reproduce here: a date from strftime_now, a tools
# list written with Python's repr by the golden file's producer, a template variable it set.
GOLDEN_NOT_REPRODUCIBLE = {
    "HuggingFaceTB/SmolLM3-3B",
    "MadeAgents/Hammer2.1",
    "ai21labs/AI21-Jamba-Large-1.6",
}


def test_chat_templates_render_as_transformers_renders_them(shared_data):
    """The golden chat-template cases: the same text as transformers' renderer, and as the golden target."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from codeplan_tools.formats.tokenizer import render_chat_template

    cases = json.loads((shared_data / "tokenizers" / "chat_template_golden_cases.json").read_text())
    assert len(cases) > 40
    for name, case in cases.items():
        data = dict(case["data"])
        messages, template = data.pop("messages"), case["chat_template"]
        agp = data.pop("add_generation_prompt", False)
        tools, documents = data.pop("tools", None), data.pop("documents", None)
        ours = render_chat_template(
            template, messages, add_generation_prompt=agp, tools=tools, documents=documents, **data
        )
        (theirs,), _ = render_jinja_template(
            [messages],
            tools=tools,
            documents=documents,
            chat_template=template,
            add_generation_prompt=agp,
            **data,
        )
        assert ours == theirs, name
        if name not in GOLDEN_NOT_REPRODUCIBLE:
            assert ours == case["target"], name


@pytest.mark.parametrize("change", ["class", "special_tokens_map", "extra_special", "templates"])
def test_folders_transformers_would_change_load_through_transformers(tiny_model, tmp_path, change):
    from codeplan_tools.formats.tokenizer import DirectTokenizer, direct_tokenizer_files, load_pack_tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tiny_model / name, folder / name)
    assert direct_tokenizer_files(folder) is not None
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if change == "class":
        config["tokenizer_class"] = "LlamaTokenizer"  # rebuilds the pre-tokenizer in transformers 5
    elif change == "special_tokens_map":
        (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    elif change == "extra_special":
        config["extra_special_tokens"] = [
            *config.get("extra_special_tokens", []),
            "<|new|>",
        ]  # added by transformers
    else:
        config["chat_template"] = [{"name": "default", "template": "{{ bos_token }}"}]
        (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if change == "extra_special":
        assert direct_tokenizer_files(folder) is not None
        assert not isinstance(load_pack_tokenizer(str(folder)), DirectTokenizer)
    else:
        assert direct_tokenizer_files(folder) is None
