"""``codeplan finetune --tensorboard DIR``: the JSON metrics also as TensorBoard scalars (issue #16 item 4)."""

from __future__ import annotations

import sys

import orjson
import pytest

from codeplan_tools.core.errors import MissingDependency
from codeplan_tools.core.streams import RecordWriter
from codeplan_tools.stages.pack import PackConfig, pack_records
from tests.helpers import invoke

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gib", "elapsed_s")


@pytest.fixture(scope="module")
def packs(tiny_model, tmp_path_factory):
    rows = [{"id": f"r{i}", "prompt": f"Question {i}?", "response": "yes " * (3 + i % 4)} for i in range(12)]
    path = tmp_path_factory.mktemp("packs") / "p.jsonl.zst"
    with RecordWriter(path) as w:
        for p in pack_records(
            rows, PackConfig(model=str(tiny_model), format="vanilla", max_len=64, workers=1)
        ):
            w.write(p)
    return path


def _args(model, packs, out, *extra):
    return ["finetune", "--model", str(model), "--data", str(packs), "--out", str(out), "--nproc", "1",
            "--max-steps", "3", "--save-every", "0", "--lr", "1e-3", "--warmup-steps", "0", *extra]  # fmt: skip


def test_event_file_holds_the_logged_steps(tiny_model, packs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    result = invoke(_args(tiny_model, packs, tmp_path / "out", "--tensorboard", str(board)))
    assert result.exit_code == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]  # the JSON lines stay
    assert [d["step"] for d in lines] == [1, 2, 3]
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"train/{key}" for key in SCALARS} <= tags
    assert "train/step" not in tags
    assert ("train/mfu" in tags) == (lines[0]["mfu"] is not None)  # null (on CPU): not written
    for key in SCALARS:
        scalars = events.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2, 3]
        for got, line in zip(scalars, lines, strict=True):
            assert got.value == pytest.approx(line[key], rel=1e-6, abs=1e-9)


def test_missing_tensorboard_is_one_line_naming_the_extra(tiny_model, packs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    result = invoke(_args(tiny_model, packs, tmp_path / "out", "--tensorboard", str(tmp_path / "tb")))
    assert result.exit_code == MissingDependency.exit_code
    (line,) = result.stderr.strip().splitlines()
    assert "pip install 'codeplan[tensorboard]'" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()  # nothing started


def test_tensorboard_folder_that_is_a_file_is_refused(tiny_model, packs, tmp_path):
    (tmp_path / "tb").write_text("not a folder")
    result = invoke(_args(tiny_model, packs, tmp_path / "out", "--tensorboard", str(tmp_path / "tb")))
    assert result.exit_code == 73 and "--tensorboard" in result.stderr and "is a file" in result.stderr
