"""Turn ⟨prompt, plan, response⟩ records into training pairs for a plan *extractor*.

    python examples/extractor_pairs.py [--template paper|nlplan|FILE] < gold.jsonl.zst > pairs.jsonl.zst

Each output record's prompt is the extraction instruction filled with the input's prompt and
response (exactly what `codeplan extract --template ...` sends), and its response is the gold plan.
Packed with `--format vanilla` and fine-tuned, this distils an extractor: the quickstart uses it to
train a tiny one; at scale the same script distils a big extractor's plans into a small one.
"""

from __future__ import annotations

import argparse
import sys

from codeplan_tools.core.records import normalize
from codeplan_tools.core.streams import RecordWriter, read_records
from codeplan_tools.stages.extract import fill_template, load_template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="paper", help="paper, nlplan or a template file")
    parser.add_argument("-i", "--input", action="append", help="input file(s); default stdin")
    args = parser.parse_args()
    _name, template = load_template(args.template)
    with RecordWriter(None) as out:
        n = 0
        for record in read_records(args.input or ["-"]):
            normalize(record, require=("prompt", "response"))
            if not record.get("plan"):
                continue
            out.write(
                {
                    "id": f"{record['id']}/extract",
                    "prompt": fill_template(template, record["prompt"], record["response"]),
                    "response": record["plan"],
                }
            )
            n += 1
    print(f"extractor_pairs: wrote {n} training pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
