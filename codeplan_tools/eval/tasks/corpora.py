"""Training corpora that ``codeplan tasks prepare`` turns into prompt/response records.

A corpus is a ``Task`` with ``corpus=True``: no scorer and no answer-format instruction; its records
are ``id``, ``prompt``, ``response`` and the fields that say where a row came from. Its files are read
with ``-i FILE|DIR`` (Parquet or Arrow files, a folder of shards, or a ``datasets`` folder saved with
``save_to_disk``), else from the folder named like the task under the data folder.

- ``webinstructsub`` (TIGER-Lab/WebInstructSub, the corpus the CodePlan paper mined): the refined
  ``question`` -> ``prompt``, the refined ``answer`` -> ``response``; ``source`` (the site a row was
  taken from) and ``index`` are kept, and the id is ``webinstructsub-<index>``. The original pair
  (``orig_question`` / ``orig_answer``) is left out: read the files directly with
  ``--prompt-field orig_question --response-field orig_answer`` to use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from codeplan_tools.core.columnar import RowNumber
from codeplan_tools.core.errors import BadRecord

from . import Task, register_task

WEBINSTRUCT_COLUMNS = ("question", "answer", "source", "index")


def webinstructsub_rows(rows: Iterable[dict], path: str) -> Iterator[dict]:
    for n, row in enumerate(rows, 1):
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise BadRecord(
                path,
                RowNumber(n),
                f"not a WebInstructSub row: needs text 'question' and 'answer' (it has {sorted(row)})",
            )
        index = row.get("index")
        record = {"id": f"webinstructsub-{index}" if index is not None else None}
        record.update(prompt=question, response=answer)
        for key in ("source", "index"):
            if key in row:
                record[key] = row[key]
        yield record


register_task(
    Task(
        "webinstructsub",
        "",
        adapter=webinstructsub_rows,
        corpus=True,
        description="WebInstructSub training corpus (Parquet shards or a datasets folder) -> prompt/response",
    ),
    aliases=("webinstruct",),
)
