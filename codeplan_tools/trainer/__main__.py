"""A worker of ``codeplan finetune --nproc N``: ``python -m codeplan_tools.trainer CONFIG_JSON``.

The launcher (``distributed.launch_local``) sets the torchrun variables; errors become one line on
stderr and the error's exit code, as in the command layer.
"""

from __future__ import annotations

import os
import sys

from codeplan_tools.core.errors import CodeplanError
from codeplan_tools.trainer.loop import STOP, FinetuneConfig, run_worker


def main() -> int:
    STOP.install()
    config = FinetuneConfig.from_json(sys.argv[1])
    try:
        return run_worker(config)
    except CodeplanError as exc:
        print(f"codeplan finetune: error: [rank {os.environ.get('RANK', '?')}] {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
