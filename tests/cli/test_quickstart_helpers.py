"""The quickstart's helpers: examples/plot_losses.py (finetune's JSON lines -> one PNG with a curve per
run) and examples/quickstart_summary.py (the closing summary from score and filter reports)."""

import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import CODEPLAN

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPT = EXAMPLES / "plot_losses.py"


def _metrics(path: Path, losses: list[float]) -> None:
    rows = [{"step": 10 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
    rows.append({"summary": True, "steps": len(losses)})  # finetune's last line has no loss
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_two_runs_make_one_png(tmp_path):
    _metrics(tmp_path / "a.jsonl", [2.0, 1.0, 0.5])
    _metrics(tmp_path / "b.jsonl", [2.5, 0.9, 0.1])
    out = tmp_path / "losses.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(out),
            f"a={tmp_path / 'a.jsonl'}",
            f"b={tmp_path / 'b.jsonl'}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_without_losses_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"summary": true}\n')
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.png"), f"a={tmp_path / 'empty.jsonl'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("has no logged losses") and "Traceback" not in proc.stderr


def _run(*args, **kw):
    return subprocess.run([*CODEPLAN, *args], capture_output=True, check=True, **kw)


def test_the_summary_reads_extraction_filter_and_compare_reports(tmp_path):
    # Gold pairs with their gold plan kept; "mined" plans: the arithmetic ones changed to a wrong value.
    pairs = _run("synth", "last_letter,arithmetic", "--n", "10", "--keep-gold-plan", "--plain").stdout
    mined = []
    for line in pairs.splitlines():
        record = orjson.loads(line)
        if record["task"] == "synth/arithmetic":
            record["plan"] = record["plan"].replace("print(", "print(1000 + ", 1)
        mined.append(orjson.dumps(record))
    (tmp_path / "mined.jsonl").write_bytes(b"\n".join(mined) + b"\n")
    (tmp_path / "pairs.jsonl").write_bytes(pairs)
    _run("score", "-i", "mined.jsonl", "--report", "extraction.json", "-q", "-o", "s.jsonl", cwd=tmp_path)
    _run("filter", "-i", "mined.jsonl", "--grounded", "--consistent", "--stats", "fs.json", "-q", "-o", "f.jsonl",
         cwd=tmp_path)  # fmt: skip
    _run("score", "-i", "pairs.jsonl", "-q", "-o", "gold.jsonl", cwd=tmp_path)
    _run(
        "score",
        "--compare",
        "gold=gold.jsonl",
        "mined=s.jsonl",
        "--report",
        "compare.json",
        "-q",
        cwd=tmp_path,
    )
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "quickstart_summary.py"),
            "extraction.json",
            "fs.json",
            "compare.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Half the mined plans (the arithmetic ones) differ from their gold plan.
    assert "equal ignoring comments 50.0%, exactly 50.0%" in out
    assert "synth/arithmetic" in out and "synth/last_letter" in out
    # The changed arithmetic plans print a value the response does not answer.
    assert "consistent: 0 agree, 10 disagree, 10 not computable" in out
    assert "gold vs" not in out and "mined vs gold: average relative improvement" in out
