"""Plan quality end to end through the real app: ``synth --keep-gold-plan`` records keep their gold plan
through ``extract``; ``filter --grounded --consistent`` rejects wrong-problem plans with the rule's
name and reports the distributions in ``--stats``; ``score`` measures fidelity to the gold plan and
plan-following, and its ``--report`` has the plan table."""

from __future__ import annotations

import orjson

from tests.helpers import invoke, read_records, write_jsonl

N = 6  # records per task


def _synth(*tasks: str) -> list[dict]:
    result = invoke(
        ["synth", ",".join(tasks), "--n", str(N), "--k", "2-3", "--keep-gold-plan", "--plain", "-q"]
    )
    assert result.exit_code == 0, result.stderr
    return result.records()


def test_keep_gold_plan_survives_extract(tiny_model, tmp_path):
    records = _synth("arithmetic")
    assert all(r["gold_plan"] == r["plan"] for r in records)
    assert "gold_plan" not in invoke(["synth", "arithmetic", "--n", "1", "--plain", "-q"]).records()[0]
    src = write_jsonl(tmp_path / "synth.jsonl", records)
    args = [
        "extract",
        "-m",
        str(tiny_model),
        "--engine",
        "hf",
        "-i",
        str(src),
        "--max-tokens",
        "8",
        "--plain",
        "-q",
    ]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    mined = result.records()
    assert [r["id"] for r in mined] == [r["id"] for r in records]
    for before, after in zip(records, mined, strict=True):
        # extract sets plan (and meta.extract) only: the gold plan and the other fields stay.
        assert after["gold_plan"] == before["gold_plan"]
        assert {k: v for k, v in after.items() if k not in ("plan", "meta")} == {
            k: v for k, v in before.items() if k not in ("plan", "meta")
        }


def test_filter_rejects_wrong_problem_plans_and_score_measures_fidelity(tmp_path):
    records = _synth("arithmetic", "last_letter")
    # "Mined" plans: the first record of each pair has its gold plan, the second the plan of another
    # record of its task (the extractor's failure: right shape, wrong values).
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    shifted = set()
    for group in by_task.values():
        for i in range(1, len(group), 2):
            group[i]["plan"] = group[(i + 1) % len(group)]["gold_plan"]
            shifted.add(group[i]["id"])
    src = write_jsonl(tmp_path / "mined.jsonl", records)
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    result = invoke(
        [
            "filter",
            "-i",
            str(src),
            "--grounded",
            "--consistent",
            "--rejects",
            str(rejects),
            "--stats",
            str(stats),
        ]
        + ["--plain", "--workers", "1"]
    )
    assert result.exit_code == 0, result.stderr
    kept = result.records()
    rejected = read_records(rejects)
    reasons = {r["id"]: r["meta"]["filter"]["reason"] for r in rejected}
    assert set(reasons) <= shifted and len(reasons) >= len(shifted) // 2
    assert {reason.split(":")[0] for reason in reasons.values()} <= {"grounded", "consistent"}
    assert all(r["plan"] == r["gold_plan"] for r in kept if r["id"] not in shifted)
    report = orjson.loads(stats.read_bytes())
    grounded = report["derived"]["grounded"]
    assert grounded["n"] + grounded["none"] == len(records)  # every record is checked by grounded
    assert sum(report["derived"]["consistent"].values()) == len(records) - report["counters"].get(
        "rejected.grounded", 0
    )
    # Without the flags, the default rules keep every plan (they are valid, short Python).
    default = invoke(["filter", "-i", str(src), "--plain", "--workers", "1", "-q"])
    assert len(default.records()) == len(records)

    # score: each record is scored on its response, so its plan is that sample's; the report has the table.
    md = tmp_path / "report.md"
    scored = invoke(["score", "-i", str(src), "--report", str(md), "--plain", "-q", "--workers", "1"])
    assert scored.exit_code == 0, scored.stderr
    for r in scored.records():
        plan = r["meta"]["score"]["plan"]
        assert plan["record"]["exact"] is (r["id"] not in shifted)
        assert plan["samples"][0]["exact"] is plan["record"]["exact"]
    text = md.read_text()
    assert "### Plans: run" in text and "| synth/arithmetic | " in text.replace("&nbsp;", "")
    exact = len(records) - len(shifted)
    plans = text.split("### Plans: run")[1]
    row = next(line for line in plans.splitlines() if line.startswith("| synth (all) |"))
    assert row.split(" | ")[1:3] == [str(len(records)), f"{100 * exact / len(records):.1f}"]
