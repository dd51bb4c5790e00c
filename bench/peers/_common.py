"""What the three peer benchmarks share: where the commands are, whole-process timing in paired rounds,
the one-line errors and the printed comparison.

Both sides run as separate processes (``subprocess``), so each figure includes its side's start-up, as
a user would see it. ``codeplan`` is the command of the core install (``.venv/bin/codeplan``, else the
one on PATH); the peer side runs under ``.venv-peers/bin/python`` (the ``bench`` extra), so the peers'
packages never enter the core install.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))
PEER_VENV_PYTHON = REPO / ".venv-peers" / "bin" / "python"


def fail(message: str, code: int = 1) -> None:
    """One line on stderr and the exit status (sysexits, as the codeplan command uses them)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def codeplan_command() -> list[str]:
    """The codeplan command of the core install: what main holds now, not a copy of it."""
    local = REPO / ".venv" / "bin" / "codeplan"
    if local.exists():
        return [str(local)]
    found = shutil.which("codeplan")
    return [found] if found else [sys.executable, "-m", "codeplan_cli"]


def peer_python() -> str:
    """The interpreter of the bench venv (datatrove, trl, lm-eval, math-verify), else this one."""
    return str(PEER_VENV_PYTHON) if PEER_VENV_PYTHON.exists() else sys.executable


def add_common_arguments(parser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=3, help="paired rounds (both sides each round); medians"
    )
    parser.add_argument("--quick", action="store_true", help="a small input: checks that both sides run")
    parser.add_argument(
        "--codeplan",
        default=None,
        help="the codeplan command to time (default: .venv/bin/codeplan, else codeplan on PATH)",
    )
    parser.add_argument(
        "--peer-python",
        default=None,
        help="the interpreter that runs the peer side (default: .venv-peers/bin/python, else this one)",
    )


def check_rounds(rounds: int) -> None:
    if rounds < 1:
        fail(f"--rounds must be at least 1, not {rounds}", os.EX_USAGE)


def run_timed(cmd: Sequence[str], what: str, stdout=subprocess.DEVNULL) -> float:
    """Wall seconds of one whole process; a failure is one line naming the side and its last stderr line."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), stdout=stdout, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        fail(f"{what} exited {proc.returncode}: {lines[-1] if lines else '(no stderr)'}", os.EX_SOFTWARE)
    return seconds


def paired_rounds(rounds: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each round runs every side once; the order flips each round so neither side always runs second
    (this machine's load changes from second to second: pairs share most of it)."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(sides[name]())
            print(f"  round {r + 1}: {name} {times[name][-1]:.2f}s", file=sys.stderr)
    return times


def print_rates(
    unit: str, amount: dict[str, float], times: dict[str, list[float]], ours: str, peer: str
) -> float:
    """Both rates (median seconds over the rounds) and the ratio ours / peer; returns the ratio."""
    rates = {}
    for name, secs in times.items():
        median = statistics.median(secs)
        rates[name] = amount[name] / median
        print(f"{name:20s} {rates[name]:12,.0f} {unit}/s  (median {median:.2f}s of {len(secs)})")
    ratio = rates[ours] / rates[peer]
    # Each round's own ratio too: on a loaded machine their spread says how far to trust the median.
    paired = [(amount[ours] / o) / (amount[peer] / p) for o, p in zip(times[ours], times[peer], strict=True)]
    print(f"ratio {ours} / {peer}: {ratio:.2f}  (per round: {', '.join(f'{r:.2f}' for r in paired)})")
    return ratio


def import_or_fail(module: str, extra: str = "bench"):
    """Import a peer package, or stop with one line saying how to get it (exit 69, EX_UNAVAILABLE)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        fail(
            f"{module} is not importable ({exc}); run the peer side under .venv-peers "
            f"(make bench-peers, or pip install -e '.[{extra}]' in a separate venv)",
            os.EX_UNAVAILABLE,
        )
