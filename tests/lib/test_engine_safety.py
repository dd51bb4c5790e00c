"""Engines and models that fail cleanly: malformed or stalled OpenAI-compatible servers (a small
server on 127.0.0.1 in this process), API keys never echoed, stdout kept for records, model folders
checked before loading and keyed on their content, and non-finite sampling settings refused."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from codeplan_tools.core.errors import EngineError, InputMissing, NotPermitted, UsageError
from codeplan_tools.engines import get_engine
from codeplan_tools.engines.base import Request, stdout_to_stderr
from codeplan_tools.engines.model_files import fingerprint, refuse_remote_code, resolve_model
from codeplan_tools.engines.openai_compat import redact
from codeplan_tools.stages.extract import ExtractConfig
from codeplan_tools.stages.generate import EngineSpec, GenerateConfig

STALL = object()  # FakeServer: hold the request without answering


@dataclass
class Seen:
    path: str
    body: dict
    headers: dict

    @property
    def prompt(self) -> str:
        if "messages" in self.body:
            return self.body["messages"][-1]["content"]
        return self.body["prompt"]


def completion(seen: Seen, text: str = "ok") -> tuple[int, dict]:
    """A well-formed answer to ``seen`` (chat or text completions)."""
    choice = {"index": 0, "finish_reason": "stop"}
    if seen.path.endswith("/chat/completions"):
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return 200, {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 answering each POST with ``answer(seen)``:
    ``(status, JSON value or bytes[, headers])``, or ``STALL`` to hold it (at most ``stall_s``)
    without answering. Records every request in ``requests``."""

    def __init__(self, answer, stall_s: float = 30.0):
        self.answer, self.stall_s = answer, stall_s
        self.requests: list[Seen] = []
        self.release = threading.Event()
        self.received = threading.Event()
        lock, fake = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = Seen(self.path, body, dict(self.headers))
                with lock:
                    fake.requests.append(seen)
                fake.received.set()
                got = fake.answer(seen)
                if got is STALL:
                    fake.release.wait(fake.stall_s)
                    return  # the connection closes without an answer
                status, payload, *extra = got
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra[0] if extra else {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def posts(self, prompt: str) -> int:
        return sum(1 for r in self.requests if r.prompt == prompt)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# -- the openai engine -----------------------------------------------------------------------------


def test_a_malformed_reply_is_retried_then_rejected_with_the_reason():
    def answer(seen):
        return {
            "no-choices": (200, {"id": "x", "object": "text_completion"}),
            "empty-choices": (200, {"choices": [], "usage": {}}),
            "not-json": (200, b"<html>login</html>"),
            "a-list": (200, [1, 2]),
            "text-not-a-string": (200, {"choices": [{"index": 0, "text": 5}]}),
        }.get(seen.prompt) or completion(seen, "fine")

    bad = ["no-choices", "empty-choices", "not-json", "a-list", "text-not-a-string"]
    with FakeServer(answer) as server:
        engine = get_engine("openai", "m", base_url=server.url, max_retries=2, backoff=0.001)
        results = engine.generate([Request(id=p, prompt=p) for p in ["good", *bad]])
    good, *rejected = results
    assert good.error is None and [c.text for c in good.completions] == ["fine"]
    for prompt, res in zip(bad, rejected, strict=True):
        assert res.completions == [] and res.error.startswith("bad-reply: "), (prompt, res)
        assert "gave up after 3 attempts" in res.error
        assert server.posts(prompt) == 3  # retried, not taken as "no samples"


def test_a_stalled_server_times_out_retries_and_gives_up_promptly():
    with FakeServer(lambda seen: STALL, stall_s=20) as server:
        engine = get_engine(
            "openai", "m", base_url=server.url, request_timeout=0.3, max_retries=1, backoff=0.01
        )
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="gave up after 2 attempts"):
            engine.generate([Request(id="a", prompt="hi")])
        assert time.monotonic() - t0 < 5
        assert server.posts("hi") == 2


def test_the_api_key_is_redacted_from_every_error_and_reason(monkeypatch):
    key = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("CODEPLAN_TEST_ECHO_KEY", key)

    def answer(seen):
        auth = seen.headers["Authorization"]
        echo = {"error": {"message": f"bad key {key}; you sent Authorization: {auth} ({auth})"}}
        status = {"reject": 400, "malformed": 200, "unauthorized": 401, "down": 503}[seen.prompt]
        return status, echo

    def assert_clean(text: str) -> None:
        assert key not in text and key[:12] not in text and "Bearer sk" not in text
        assert "[redacted]" in text

    with FakeServer(answer) as server:
        engine = get_engine(
            "openai",
            "m",
            base_url=server.url,
            api_key_env="CODEPLAN_TEST_ECHO_KEY",
            max_retries=1,
            backoff=0.001,
        )
        reject, malformed = engine.generate(
            [Request(id="a", prompt="reject"), Request(id="b", prompt="malformed")]
        )
        assert reject.error.startswith("HTTP 400") and malformed.error.startswith("bad-reply")
        assert_clean(reject.error)
        assert_clean(malformed.error)
        for prompt in ("unauthorized", "down"):
            with pytest.raises(EngineError) as err:
                engine.generate([Request(id="c", prompt=prompt)])
            assert_clean(str(err.value))
        assert server.requests[0].headers["Authorization"] == f"Bearer {key}"  # it was sent


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi",
        '{"authorization": "Bearer abc.def-ghi"}',
        "header api-key=abc.def-ghi&x=1",
        "token Bearer abc.def-ghi was refused",
        "https://user:abc.def-ghi@host/v1",
    ],
)
def test_redact_removes_credentials_in_the_usual_places(text):
    assert "abc.def-ghi" not in redact(text) and "[redacted]" in redact(text)
    assert redact("the key xyz123 is wrong", ("xyz123",)) == "the key [redacted] is wrong"


# -- stdout carries records only -------------------------------------------------------------------


STDOUT_SCRIPT = """
import logging, os, sys
from codeplan_tools.engines.base import stdout_to_stderr
log = logging.getLogger("lib")
log.addHandler(logging.StreamHandler(sys.stdout))  # like vLLM's: holds stdout from before
print("before", flush=True)
with stdout_to_stderr():
    print("from-print")
    log.warning("from-logger")
    os.write(1, b"from-fd-1\\n")
    sys.__stdout__.write("from-unflushed-buffer\\n")
    os.system("echo from-child-process")
print("after", flush=True)
"""


def test_stdout_to_stderr_catches_print_loggers_fd_writes_and_children():
    import subprocess

    done = subprocess.run([sys.executable, "-c", STDOUT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "before\nafter\n"
    for text in ("from-print", "from-logger", "from-fd-1", "from-unflushed-buffer", "from-child-process"):
        assert text in done.stderr


def test_stdout_to_stderr_restores_stdout_after_an_exception(capfd):
    with pytest.raises(KeyboardInterrupt), stdout_to_stderr():
        raise KeyboardInterrupt
    os.write(1, b"records\n")
    assert capfd.readouterr().out == "records\n"


# -- model folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "files", "message"),
    [
        ("nope", None, "--model {path}: no such folder"),
        ("tiny/", None, "--model tiny/: no such folder"),  # not a hub id either
        ("weights-only", ["config.json"], "has no tokenizer.*--tokenizer"),
        ("tokenizer-only", ["tokenizer.json", "tokenizer_config.json"], "not a model folder"),
    ],
)
def test_missing_and_incomplete_model_folders_are_one_line_errors(
    tiny_model, tmp_path, monkeypatch, folder, files, message
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / folder
    if files is not None:
        path.mkdir()
        for name in files:
            shutil.copy(tiny_model / name, path)
    where = folder if folder.endswith("/") else str(path)
    with pytest.raises(InputMissing, match=message.format(path=re.escape(str(path)))) as error:
        resolve_model(where)
    assert "\n" not in str(error.value)


def test_a_tokenizer_only_folder_is_enough_for_a_tokenizer(tiny_model, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, tmp_path)
    assert resolve_model(str(tmp_path), need="tokenizer").local


def test_a_model_that_needs_remote_code_is_refused_unless_trusted(tiny_model, tmp_path):
    model = tmp_path / "custom"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="codeplan-custom", auto_map={"AutoModelForCausalLM": "modeling.Custom"})
    (model / "config.json").write_text(json.dumps(config))
    found = resolve_model(str(model))
    with pytest.raises(NotPermitted, match="--trust-remote-code"):
        refuse_remote_code(found, trust_remote_code=False)
    refuse_remote_code(found, trust_remote_code=True)
    refuse_remote_code(resolve_model(str(tiny_model)), trust_remote_code=False)


def _perturb_one_tensor(folder) -> None:
    """Re-export ``folder`` with one tensor changed (as a further fine-tuning step would)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, path, metadata={"format": "pt"})


def test_the_resume_key_follows_the_model_content_not_its_spelling(tiny_model, tmp_path, monkeypatch):
    model = tmp_path / "ckpt"
    shutil.copytree(tiny_model, model)
    monkeypatch.chdir(tmp_path)

    def settings(name: str) -> dict:
        return GenerateConfig().settings(EngineSpec(model=name, engine="hf"))

    spelled = [
        settings(name) for name in ("ckpt", "ckpt/", "./ckpt", str(model), str(tmp_path / "." / "ckpt"))
    ]
    assert all(s == spelled[0] for s in spelled)
    assert "model" not in spelled[0] and len(spelled[0]["model_fingerprint"]) == 16
    elsewhere = tmp_path / "copy" / "renamed"
    shutil.copytree(model, elsewhere)  # the same model moved and renamed (another scratch dir)
    assert settings(str(elsewhere)) == spelled[0]

    _perturb_one_tensor(model)
    assert settings("ckpt")["model_fingerprint"] != spelled[0]["model_fingerprint"]
    (elsewhere / "tokenizer_config.json").write_text(
        (elsewhere / "tokenizer_config.json").read_text().replace("</s>", "</s> ", 1)
    )
    assert settings(str(elsewhere))["model_fingerprint"] != spelled[0]["model_fingerprint"]


def test_fingerprint_reads_samples_not_whole_weight_files(tmp_path):
    """A big weight file costs a few reads: the same bytes where sampled give the same identity,
    and a change inside a sampled block (the middle of a tensor) gives another."""
    import struct

    size = 8 << 20
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    data = bytearray(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    before = fingerprint(tmp_path)
    data[size // 2] = 1
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    assert fingerprint(tmp_path) != before


def test_a_hub_id_offline_and_not_cached_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(InputMissing, match="not in the Hugging Face cache"):
        resolve_model("codeplan-test-org/no-such-model")
    assert time.monotonic() - t0 < 5
    assert resolve_model("codeplan-test-org/no-such-model", strict=False).identity is None


# -- sampling settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_sampling_settings_are_refused(field, value):
    with pytest.raises(UsageError, match="finite"):
        GenerateConfig(**{field: value})
    with pytest.raises(UsageError, match="finite"):
        ExtractConfig(**{field: value})


def test_init_model_into_a_path_that_cannot_be_a_folder_is_cannot_create(tmp_path):
    from codeplan_tools.core.errors import CannotCreate
    from codeplan_tools.tools.init_model import init_model

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CannotCreate, match="cannot create the model folder"):
        init_model(tmp_path / "a-file")


def test_a_cached_hub_model_loads_from_its_snapshot_without_the_network(tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--codeplan-test--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = resolve_model("codeplan-test/tiny")
    assert found.local and found.path.endswith(commit) and found.identity == commit
    spec = EngineSpec(model="codeplan-test/tiny", engine="hf")
    spec.check()
    assert spec.identity()["model_fingerprint"] == commit and spec.meta()["model"] == "codeplan-test/tiny"
    engine = spec.build()
    assert engine.generate([Request(id="a", prompt="Hi", max_tokens=2)])[0].completions


def test_a_weights_only_folder_works_with_a_separate_tokenizer(tiny_model, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_model / name, weights)
    with pytest.raises(InputMissing, match="--tokenizer"):
        EngineSpec(model=str(weights), engine="hf").check()
    spec = EngineSpec(model=str(weights), engine="hf", tokenizer=str(tiny_model))
    spec.check()
    assert spec.identity()["tokenizer_fingerprint"] == fingerprint(tiny_model, "tokenizer")
    assert spec.build().generate([Request(id="a", prompt="Hi", max_tokens=2)])[0].completions
