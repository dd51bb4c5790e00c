"""Engine commands through real pipes and processes: ``generate --engine vllm | score`` with vLLM
printing what it likes, SIGTERM/Ctrl-C against a stalled server, a malformed server's records
rejected with the reason, and hub lookups that fail in seconds with one line."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time

import orjson
import pytest

from codeplan_tools.core.errors import EX_NOINPUT
from tests.fixtures.models import free_port, vllm_or_fail
from tests.helpers import CODEPLAN, decode_records, invoke, read_records, with_ctrl_c
from tests.lib.test_engine_safety import STALL, FakeServer, completion


def _write(path, records) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


@pytest.mark.vllm
@pytest.mark.slow
def test_generate_on_vllm_piped_into_score_carries_records_only(tiny_model, tmp_path):
    vllm_or_fail()
    src = _write(
        tmp_path / "q.jsonl",
        [
            {"id": "q1", "question": "What is 2 + 3?", "answer": "5", "task": "gsm8k"},
            {
                "id": "q2",
                "question": "Tom has 3 apples and buys 4. How many?",
                "answer": "7",
                "task": "gsm8k",
            },
        ],
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_LOGGING_STREAM", None)  # as a user runs it: vLLM's own default (stdout)
    generate = subprocess.Popen(
        [*CODEPLAN, "generate", "-m", str(tiny_model), "--engine", "vllm", "--enforce-eager", "--dtype", "float32",
         "--max-tokens", "8", "-i", src],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    score = subprocess.Popen(
        [*CODEPLAN, "score", "--plain"], stdin=generate.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    generate.stdout.close()  # score owns the read end now
    try:
        scored, score_err = score.communicate(timeout=300)
        _, generate_err = generate.communicate(timeout=60)
    finally:
        for proc in (generate, score):
            if proc.poll() is None:
                proc.kill()
    assert generate.returncode == 0, generate_err.decode()[-3000:]
    assert score.returncode == 0, score_err.decode()[-3000:]
    records = decode_records(scored)
    assert [r["id"] for r in records] == ["q1", "q2"]
    assert all("correct" in r["meta"]["score"] and r["meta"]["generate"]["engine"] == "vllm" for r in records)
    assert b"INFO" in generate_err  # vLLM did print: on stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_waiting_on_a_stalled_server_promptly(tmp_path, sig):
    def answer(seen):
        return completion(seen, "plan()") if "r0" in seen.prompt else STALL

    src = _write(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"r{i}?", "response": "x"} for i in range(3)]
    )
    out = tmp_path / "out.jsonl.zst"
    with FakeServer(answer, stall_s=60) as server:
        proc = subprocess.Popen(
            [*CODEPLAN, "extract", "-m", "served", "--engine", "openai", "--base-url", server.url, "-i", src,
             "-o", str(out), "--chunk-size", "1", "--request-timeout", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=with_ctrl_c,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(server.requests) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server.requests) == 2, "the run never reached the stalled request"
            t0 = time.monotonic()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
            stopped_in = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + sig, err.decode()[-2000:]
    assert stopped_in < 10
    # The frame was closed: the record done before the signal is readable.
    assert [r["id"] for r in read_records(out)] == ["r0"]


def test_a_malformed_server_rejects_its_records_with_the_reason_and_the_run_goes_on(tmp_path):
    def answer(seen):
        return (200, {"object": "chat.completion"}) if "BAD" in seen.prompt else completion(seen, "plan()")

    src = _write(
        tmp_path / "in.jsonl",
        [
            {"id": "good", "prompt": "Add 1 and 2.", "response": "3"},
            {"id": "bad", "prompt": "BAD", "response": "x"},
        ],
    )
    with FakeServer(answer) as server:
        res = invoke(
            ["extract", "-m", "served", "--engine", "openai", "--base-url", server.url, "-i", src, "--max-retries",
             "1", "-o", str(tmp_path / "out.jsonl"), "--rejects", str(tmp_path / "rej.jsonl")]
        )  # fmt: skip
        bad_posts = sum(1 for r in server.requests if "BAD" in r.prompt)
    assert res.exit_code == 0, res.stderr
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["good"]
    (rejected,) = read_records(tmp_path / "rej.jsonl")
    assert rejected["id"] == "bad" and rejected["meta"]["extract"]["reason"].startswith("bad-reply: ")
    assert bad_posts == 2  # --max-retries 1


class FakeHub:
    """A Hugging Face hub on 127.0.0.1 that knows no model (404 RepoNotFound to every GET/HEAD)."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b'{"error": "Repository not found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "hub,args,message",
    [
        ("unreachable", ["--engine", "hf"], "the hub could not be reached"),
        ("empty", ["--engine", "hf"], "the hub has no such model"),
        (
            "unreachable",
            ["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1"],
            "pass --tokenizer DIR",
        ),
    ],
)
def test_a_model_neither_local_nor_on_the_hub_fails_in_seconds_with_one_line(tmp_path, hub, args, message):
    fake = FakeHub() if hub == "empty" else None
    env = {
        **os.environ,
        "HF_ENDPOINT": fake.url if fake else f"http://127.0.0.1:{free_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache
        "HF_HUB_ETAG_TIMEOUT": "5",
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    src = _write(tmp_path / "q.jsonl", [{"id": "a", "prompt": "Hi?"}])
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [*CODEPLAN, "generate", "-m", "codeplan-test-org/no-such-model", *args, "-i", src],
            capture_output=True,
            env=env,
            timeout=120,
        )
    finally:
        if fake:
            fake.close()
    err = done.stderr.decode()
    assert done.returncode == EX_NOINPUT, err[-2000:]
    assert time.monotonic() - t0 < 30
    assert len(err.strip().splitlines()) == 1 and message in err and "no local folder" in err


@pytest.mark.parametrize("command", ["generate", "extract"])
@pytest.mark.parametrize(
    "option, value",
    [
        ("-t", "nan"),
        ("--temperature", "inf"),
        ("--top-p", "nan"),
        ("--gpu-memory-utilization", "nan"),
        ("--request-timeout", "inf"),
    ],
)
def test_engine_options_refuse_non_finite_numbers(tiny_model, command, option, value):
    res = invoke([command, "-m", str(tiny_model), "--engine", "hf", option, value], input=b"")
    assert res.exit_code == 2, res.stderr
    assert f"{value!r} is not a finite number" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_init_model_refuses_a_non_finite_init_range():
    res = invoke(["init-model", "unused", "--init-range", "nan"])
    assert res.exit_code == 2 and "'nan' is not a finite number" in res.stderr
