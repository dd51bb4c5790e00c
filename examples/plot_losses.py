"""Plot training loss curves from `codeplan finetune`'s JSON lines (one file per run) into one PNG.

    python examples/plot_losses.py --out losses.png vanilla=student-vanilla-metrics.jsonl \\
        codeplan=student-codeplan-metrics.jsonl

Each metrics file holds one JSON object per logged step (`step`, `loss`, ...), as finetune writes them
on stdout; lines without a loss (the end-of-run summary) are skipped. The y axis is logarithmic: tiny
students' losses span two orders of magnitude.
"""

from __future__ import annotations

import argparse
import sys

import orjson


def read_curve(path: str) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    with open(path, "rb") as f:
        for line in f:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(row, dict) and "loss" in row and "step" in row:
                steps.append(row["step"])
                losses.append(row["loss"])
    return steps, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FILE", help="a run's name and its metrics file")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="training loss")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            sys.exit(f"plot_losses: {spec!r} is not NAME=FILE")
        steps, losses = read_curve(path)
        if not steps:
            sys.exit(f"plot_losses: {path} has no logged losses")
        ax.plot(steps, losses, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(args.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot_losses: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
