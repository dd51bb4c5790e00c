"""Generate ``man/`` and ``completions/`` from the click command tree (never edit them by hand).

    python -m codeplan_cli.docs            # rewrite man/ and completions/
    python -m codeplan_cli.docs --check    # exit 1 if the committed files are stale (tests do this)

Man pages come from click-man, completion scripts from click's own shell completion; both read the
same command objects as ``--help``, so they cannot drift from the CLI.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from click.shell_completion import get_completion_class

from codeplan_cli.main import COMPLETE_VAR, get_command
from codeplan_tools import __version__

REPO = Path(__file__).resolve().parents[1]
SHELLS = {"bash": "codeplan.bash", "zsh": "_codeplan", "fish": "codeplan.fish"}
# A fixed date keeps the pages reproducible (the staleness test compares bytes).
MAN_DATE = "2026-11-22"


def render(target: Path) -> None:
    """Write every generated file under ``target`` (``man/`` and ``completions/`` inside it)."""
    from click_man.core import write_man_pages

    command = get_command()
    man = target / "man"
    man.mkdir(parents=True, exist_ok=True)
    write_man_pages("codeplan", command, version=__version__, target_dir=str(man), date=MAN_DATE)
    completions = target / "completions"
    completions.mkdir(parents=True, exist_ok=True)
    for shell, filename in SHELLS.items():
        source = get_completion_class(shell)(command, {}, "codeplan", COMPLETE_VAR).source()
        (completions / filename).write_text(source)


def stale_files(repo: Path = REPO) -> list[str]:
    """Generated files that differ from (or are missing in) the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        render(fresh)
        names = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
        for sub in ("man", "completions"):
            names |= {p.relative_to(repo) for p in (repo / sub).rglob("*") if p.is_file()}
        return sorted(
            str(n)
            for n in names
            if not (fresh / n).exists()
            or not (repo / n).exists()
            or (fresh / n).read_bytes() != (repo / n).read_bytes()
        )


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print("stale generated files (run: make docs): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    for sub in ("man", "completions"):
        for old in (REPO / sub).glob("*"):
            old.unlink()
    render(REPO)
    print(f"wrote {REPO / 'man'} and {REPO / 'completions'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
