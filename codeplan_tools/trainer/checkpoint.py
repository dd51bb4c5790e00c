"""Sharded DCP checkpoints, written atomically, newest kept; the checkpointer decides when to save
(and when the trainer exports an intermediate model: ``should_export``, ``--export-every``).

Layout under ``<out>/checkpoints/``: ``step-00000040/`` holds the DCP shards of the model and the
optimizer (one file per rank, as ``torch.distributed.checkpoint`` writes them, plus ``.metadata``)
and ``trainer.json`` (step, schedule, data layout, run key). A checkpoint is first written to
``step-N.tmp/``; only when every rank has finished and ``trainer.json`` is in place does rank 0
rename it to ``step-N/``. A crash mid-save therefore never leaves something that looks complete, and
``latest()`` ignores ``*.tmp``. All ranks must see the same folder (a shared file system on
multi-node jobs).

Only trainable parameters are saved (``state_options``: frozen ones are left out, with their
optimizer state, which they do not have): a LoRA checkpoint holds the adapters and their AdamW
moments, and a resume takes the frozen base from ``--model``. Full fine-tuning trains everything, so
its checkpoints hold the whole model as before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from . import distributed
from .config import CheckpointConfig

_STEP_DIR = re.compile(r"^step-(\d+)$")


def state_options(*, load: bool = False):
    """DCP state-dict options: frozen parameters left out; on load, not strict about them (``load``
    checks itself that only frozen parameters were missing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=not load)


def state_key(name: str) -> str:
    """The state-dict key of a parameter or module name: without activation checkpointing's wrapper."""
    return name.replace("_checkpoint_wrapped_module.", "")


def frozen_keys(model) -> set[str]:
    """State-dict keys of the parameters that do not require grad, tied copies included
    (``ignore_frozen_params`` drops a tied embedding once, and its ``lm_head.weight`` twin stays)."""
    return {
        state_key(name) for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    }


def trainable_state_dict(model, optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts of the trainable parameters (sharded: what DCP saves)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=state_options())
    for key in frozen_keys(model):
        model_sd.pop(key, None)
    return model_sd, optim_sd


class Checkpointer:
    def __init__(self, folder: str | Path, config: CheckpointConfig, *, is_main: bool):
        self.config = config
        self.folder = Path(folder)  # <out>/checkpoints
        self.is_main = is_main

    # -- when ----------------------------------------------------------------------------------
    def should_save(self, step: int, *, last: bool = False, force: bool = False) -> bool:
        if step <= 0:
            return False
        if force or last:
            return True
        return self.config.save_every > 0 and step % self.config.save_every == 0

    def should_export(self, step: int, *, last: bool = False) -> bool:
        """An intermediate export (``--export-every``) at ``step``; the last step's export is the final one."""
        every = self.config.export_every
        return not last and step > 0 and every > 0 and step % every == 0

    # -- where ---------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "trainer.json").is_file() and (p / ".metadata").is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    # -- save / load ---------------------------------------------------------------------------
    def maybe_save(
        self, step: int, model, optimizer, extra: dict, *, last: bool = False, force: bool = False
    ):
        if not self.should_save(step, last=last, force=force):
            return None
        final = self.folder / f"step-{step:08d}"
        if final.is_dir() and (final / "trainer.json").is_file():
            return final  # already saved (e.g. the last step of a finished run)
        return self.save(step, model, optimizer, extra)

    def save(self, step: int, model, optimizer, extra: dict) -> Path:
        import torch.distributed.checkpoint as dcp

        final = self.folder / f"step-{step:08d}"
        tmp = self.folder / f"step-{step:08d}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        model_sd, optim_sd = trainable_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        if self.is_main:
            data = json.dumps({"step": step, **extra}, indent=2, sort_keys=True)
            with open(tmp / "trainer.json", "w") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            self._prune()
        distributed.barrier()
        return final

    def _prune(self) -> None:
        found = self.checkpoints()
        for _step, path in found[: max(0, len(found) - max(1, self.config.keep_checkpoints))]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.folder.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, model, optimizer, path: Path | None = None) -> dict | None:
        """Restore model and optimizer from ``path`` (default: the newest); returns trainer.json or None."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        path = path or self.latest()
        if path is None:
            return None
        model_sd, optim_sd = trainable_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))  # every key asked for must be in the checkpoint
        result = set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=state_options(load=True),
        )
        missing = {state_key(k) for k in result.missing_keys} - frozen_keys(model)
        unexpected = set(result.unexpected_keys) | missing
        if unexpected:
            raise RuntimeError(f"checkpoint {path} does not fit the model: {sorted(unexpected)[:5]}")
        return json.loads((path / "trainer.json").read_text())

    def close(self) -> None:
        pass
