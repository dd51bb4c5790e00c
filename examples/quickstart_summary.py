"""The quickstart's closing summary: extraction fidelity, the plan-quality filter, and per student
its accuracy, plan fidelity and plan-following (from the JSON files the quickstart writes).

    python examples/quickstart_summary.py extraction.json filter-stats.json compare.json

- extraction.json: `score --report` over the mined records, each carrying its gold plan (`gold_plan`):
  the share of mined plans equal to the gold plan, exactly and with `#` comments ignored.
- filter-stats.json: `filter --grounded --consistent --stats`: the share of mined plans whose literals
  occur in the prompt or response (grounded share >= 0.5, the default `--grounded-min`) and how often
  a plan's printed value agrees with the response's answer.
- compare.json: `score --compare` over the students: mean accuracy over tasks, the students' own plans
  against the test questions' gold plans, and plan-following (a sample's answer equals the value its
  own plan prints, where that is computable without running the plan).
"""

from __future__ import annotations

import json
import sys


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    extraction, filter_stats, compare = (json.load(open(path)) for path in sys.argv[1:])

    plan = extraction["runs"][0].get("plan") or {}
    print("\nExtraction fidelity (mined plan vs gold plan, n = {}):".format(plan.get("compared", 0)))
    print(f"  equal ignoring comments {pct(plan.get('exact_no_comments'))}, exactly {pct(plan.get('exact'))}")
    for task, row in sorted(extraction["runs"][0]["tasks"].items()):
        p = row.get("plan") or {}
        print(
            f"    {task:<22} {pct(p.get('exact_no_comments')):>7} ignoring comments, {pct(p.get('exact')):>7} exactly"
        )

    grounded = filter_stats["derived"].get("grounded") or {}
    bins = grounded.get("bins") or {}
    checked = grounded.get("n", 0)
    below = sum(n for label, n in bins.items() if float(label.split("-")[1]) <= 0.5)  # shares under 0.5
    consistent = filter_stats["derived"].get("consistent") or {}
    print("\nPlan-quality filter over the mined plans:")
    if checked:
        print(
            f"  grounded (share >= 0.5): {pct((checked - below) / checked)} of {checked} (mean share {grounded.get('mean')})"
        )
    print(
        "  consistent: {agree} agree, {disagree} disagree, {unknown} not computable".format(
            agree=consistent.get("agree", 0),
            disagree=consistent.get("disagree", 0),
            unknown=consistent.get("unknown", 0),
        )
    )

    print("\nStudents on the held-out questions:")
    print(f"  {'run':<14} {'accuracy':>9} {'plan = gold':>12} {'follows plan':>13}")
    for run in compare["runs"]:
        tasks = run["tasks"].values()
        accuracy = sum(t["accuracy"] for t in tasks) / max(1, len(tasks))
        p = run.get("plan") or {}
        print(
            f"  {run['name']:<14} {pct(accuracy):>9} {pct(p.get('exact_no_comments')):>12} {pct(p.get('following')):>13}"
        )
    averages = compare["comparison"].get("averages") or {}
    for name, avg in averages.items():
        print(
            f"  {name} vs {compare['comparison']['baseline']}: average relative improvement {pct(avg['average_relative_improvement'])}"
        )


if __name__ == "__main__":
    main()
