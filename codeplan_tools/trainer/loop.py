"""``codeplan finetune``: the Trainer and the entry points that launch it.

``Trainer.train()`` reads like the algorithm: resume from the newest checkpoint, then for each step
``train_step`` (gradient accumulation over the micro-batches, one optimizer update),
``metrics.log``, ``maybe_export`` and ``checkpointer.maybe_save``; a stop request (SIGTERM, e.g. SLURM
preemption or ``scontrol requeue``) saves and returns; the end exports a Hugging Face folder into
``<out>/``. Components own their timing (``Checkpointer.should_save`` and ``should_export``,
``Metrics.should_log``).

Intermediate exports (``--export-every N``): every N steps but the last, the model is also exported
as a complete Hugging Face folder ``<out>/step-NNNNNN/`` by the same writer as the final export
(``export.export_model``: a collective every rank calls, rank 0 writes, ``codeplan.json`` last with the
run key and step), so ``codeplan generate -m <out>/step-000500`` loads it. None is deleted. It is
written before that step's checkpoint: a run killed in between redoes the step after resuming and
finds the export complete. A resumed run does not rewrite an export whose ``codeplan.json`` names
this run and step (rank 0 decides, every rank follows); an incomplete one is written again.

Loss normalisation: the loss of a step is the sum of the token losses of every micro-batch on
every rank divided by the number of loss tokens in that whole window (counted up front and
all-reduced), so packs with many or few loss tokens weigh by their tokens, whatever the split into
micro-batches and ranks. FSDP averages gradients over ranks, so each rank scales its loss by the
world size.

Resume: the position in the data, the learning rate and everything else are functions of the step,
restored with the model and optimizer from the DCP checkpoint; the same command run again continues
and produces the same losses as an uninterrupted run. ``<out>/run.json`` holds the settings that
determine the run (the run key); a re-run with other settings on the same ``--out`` is refused.

LoRA (``--lora-r R``, ``lora.py``): peft's adapters are injected into the model before
``fully_shard``; only they require grad, so only they are in the optimizer and in the checkpoints.
The LoRA settings are part of the run key. Randomness inside a step (the adapters' dropout) is
seeded from (seed, step, rank), so a resumed run draws what the uninterrupted one drew. The export
is the merged model, or the adapter folder alone with ``--export adapter``.

Launching (``run``): in this process; under ``torchrun`` or ``srun`` (each process reads its rank,
see ``distributed.detect``); or, with ``--nproc N``, as N local worker processes that this process
starts as ``python -m codeplan_tools.trainer CONFIG_JSON`` with the torchrun variables set (a plain
subprocess per rank rather than torch.multiprocessing: nothing to pickle, the same code path as
torchrun, and the launcher can forward SIGTERM and stop the others when one fails).

Preemption: SIGTERM or SIGINT finishes the current step, saves a checkpoint and exits 0. The save
must fit in the time the scheduler allows after SIGTERM (SLURM's KillWait, or ``sbatch
--signal=TERM@SECONDS`` for an earlier warning; torchrun waits 30 s before killing its workers).

Limitation: every rank loads the whole base model on CPU (fp32) before ``fully_shard`` moves its
shard to the device; host memory must hold one copy per local rank.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from codeplan_tools.core.errors import SettingsMismatch, UsageError

from . import attention, distributed
from .checkpoint import Checkpointer
from .config import FinetuneConfig
from .data import PackLoader, read_packs
from .lr_schedule import WarmupCosine
from .metrics import Metrics

# ---------------------------------------------------------------------------------------------
# Stop requests (SIGTERM / SIGINT): a flag the loop reads between steps.


class StopFlag:
    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.signal = signum

    def install(self) -> dict:
        return {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}


STOP = StopFlag()


def log(msg: str, info: distributed.DistInfo | None = None) -> None:
    if info is None or info.is_main:
        print(f"codeplan finetune: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, config: FinetuneConfig, info: distributed.DistInfo, stop: StopFlag = STOP):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from codeplan_tools.formats import get_format, gguf
        from codeplan_tools.formats.tokenizer import load_tokenizer, tokenizer_fingerprint

        config.validate()
        hf_logging.disable_progress_bar()  # one "Loading weights" bar per rank only clutters job logs
        self.config, self.info, self.stop = config, info, stop
        self.out = Path(config.out)
        self.device = distributed.device_for(info)
        distributed.init_process_group(info, self.device)
        torch.manual_seed(config.loader.seed)

        # -m FILE.gguf: the folder converted from it once (cached), for the weights and the export.
        self.model_dir = (
            str(gguf.converted_model(config.model)) if gguf.is_gguf(config.model) else config.model
        )
        # Data first: a fingerprint mismatch is refused before the model is loaded.
        self.tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        self.tokenizer_hash = tokenizer_fingerprint(config.model, self.tokenizer)
        self.packs = read_packs(config.data, self.tokenizer_hash)
        fp = self.packs.fingerprint
        self.format = get_format(
            fp["format"], self.tokenizer, chat=fp["chat_template"], end_marker=fp["end_marker"]
        )

        cuda = self.device.type == "cuda"
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
        self.attn_implementation = attention.choose(config.attention, self.device.type)
        if attention.check_confined(self.attn_implementation) == "varlen" and not self.bf16:
            raise UsageError("flash attention computes in bf16: use --precision bf16 (or auto on a GPU)")
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir,
            dtype=torch.float32,
            attn_implementation=self.attn_implementation,
            trust_remote_code=config.trust_remote_code,
        )
        attention.check_confined(getattr(model.config, "_attn_implementation", None))
        self.base_dtype = _config_dtype(model.config)
        model.train()  # from_pretrained returns eval mode, which would switch dropout (LoRA's) off
        self.lora = None
        if config.lora.enabled:
            from . import lora

            self.lora = lora.apply(model, config.lora, base_name=config.model)  # before fully_shard
        self.metrics = Metrics(
            config.metrics,
            model=model,
            device=self.device,
            world_size=info.world_size,
            bf16=self.bf16,
            is_main=info.is_main,
        )
        ac = config.activation_checkpointing if config.activation_checkpointing is not None else cuda
        if ac:
            distributed.apply_activation_checkpointing(model)
        distributed.shard_model(model, self.device, bf16=self.bf16)  # also moves the shards to the device
        self.model = model
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],  # LoRA: the adapters only
            lr=config.lr.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            eps=1e-8,
        )
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.loader = PackLoader(
            config.loader, self.packs, rank=info.rank, world_size=info.world_size, pad_id=int(pad)
        )
        self.total_steps = self.loader.total_steps
        self.lr_schedule = WarmupCosine(config.lr, self.optimizer, self.total_steps)
        self.checkpointer = Checkpointer(self.out / "checkpoints", config.checkpoint, is_main=info.is_main)
        self.step = 0
        self.run_key, self.run_settings = self._run_key()
        log(
            f"{len(self.packs.packs)} packs ({self.packs.n_tokens} tokens, {self.packs.n_loss_tokens} with loss), "
            f"{info.world_size} rank(s) [{info.source}], {self.total_steps} steps of "
            f"{self.loader.per_step} packs, attention {self.attn_implementation}, "
            f"{'bf16 mixed' if self.bf16 else 'fp32'} precision, activation checkpointing {'on' if ac else 'off'}"
            + self._lora_summary(),
            info,
        )

    def _lora_summary(self) -> str:
        if self.lora is None:
            return ""
        c = self.config.lora
        # numel of a sharded parameter (DTensor) is the whole parameter's
        trainable = sum(p.numel() for group in self.optimizer.param_groups for p in group["params"])
        total = sum(p.numel() for p in self.model.parameters())
        return (
            f", LoRA r {c.lora_r} alpha {c.alpha:g} dropout {c.lora_dropout:g} on {' '.join(c.lora_targets)} "
            f"({trainable} of {total} parameters trainable)"
        )

    # -- run identity --------------------------------------------------------------------------
    def _run_key(self) -> tuple[str, dict]:
        c = self.config
        settings = {
            "model": str(Path(c.model).resolve()) if Path(c.model).exists() else c.model,
            "fingerprint": self.packs.fingerprint,
            "packs": len(self.packs.packs),
            "pack_tokens": self.packs.n_tokens,
            "world_size": self.info.world_size,
            "loader": asdict(c.loader),
            "lr": asdict(c.lr),
            "total_steps": self.total_steps,
            "weight_decay": c.weight_decay,
            "betas": list(c.betas),
            "max_grad_norm": c.max_grad_norm,
            "bf16": self.bf16,
            "seed": c.loader.seed,
        }
        if c.lora.enabled:  # absent for full fine-tuning, so the run keys of earlier runs still match
            settings["lora"] = {
                "r": c.lora.lora_r,
                "alpha": c.lora.alpha,
                "dropout": c.lora.lora_dropout,
                "targets": sorted(c.lora.lora_targets),
            }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        return key, settings

    def _check_run(self) -> None:
        path = self.out / "run.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("run_key") != self.run_key:
                mine, theirs = self.run_settings, old.get("settings", {})
                diff = ", ".join(
                    f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}"
                    for k in sorted(set(mine) | set(theirs))  # a key only one side has (lora) differs too
                    if theirs.get(k) != mine.get(k)
                )
                raise SettingsMismatch(
                    f"{self.out} holds a run with other settings ({diff or 'run key differs'}); "
                    "use another --out, or delete it to start over"
                )
        elif self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name("run.json.tmp")
            tmp.write_text(
                json.dumps({"run_key": self.run_key, "settings": self.run_settings}, indent=2) + "\n"
            )
            tmp.replace(path)
        distributed.barrier()

    def extra_state(self) -> dict:
        return {
            "run_key": self.run_key,
            "lr_schedule": self.lr_schedule.state_dict(),
            "data": self.loader.state_dict(),
        }

    def load(self) -> None:
        self._check_run()
        state = self.checkpointer.load(self.model, self.optimizer)
        if state is None:
            return
        if state.get("run_key") != self.run_key:
            raise SettingsMismatch(f"the checkpoint in {self.checkpointer.folder} belongs to another run")
        self.loader.load_state_dict(state.get("data", {}))
        self.lr_schedule.load_state_dict(state.get("lr_schedule", {}))
        self.step = int(state["step"])
        log(f"resumed from step {self.step} ({self.checkpointer.latest()})", self.info)

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> str:
        """Run to the end (returns "done") or until a stop request (returns "stopped")."""
        self.load()
        if self.step >= self.total_steps and self.exported():
            log(f"already complete: {self.out} holds the model of step {self.step}", self.info)
            return "done"
        while self.step < self.total_steps:
            values = self.train_step()
            last = self.step == self.total_steps
            self.metrics.log(self.step, last=last, **values)
            self.maybe_export(last=last)
            stop = self.stop_requested()
            self.checkpointer.maybe_save(
                self.step, self.model, self.optimizer, self.extra_state(), last=last, force=stop
            )
            if stop and not last:
                log(
                    f"stopped at step {self.step} (checkpoint saved); run the same command again to resume",
                    self.info,
                )
                return "stopped"
        self.export()
        return "done"

    def stop_requested(self) -> bool:
        # Every rank must agree, or one would save while another waits in the next step.
        return distributed.all_reduce_max(1.0 if self.stop.signal is not None else 0.0, self.device) > 0

    def train_step(self) -> dict:
        import torch
        import torch.nn.functional as F

        step = self.step
        # What a step draws (dropout) is a function of the step: a resumed run draws the same.
        torch.manual_seed(hash((self.config.loader.seed, step, self.info.rank)) & 0xFFFF_FFFF)
        micro = self.loader.micro_batches(step, self.device)
        local_tokens = sum(mb.n_tokens for mb in micro)
        local_loss_tokens = sum(mb.n_loss_tokens for mb in micro)
        sq = float(sum(n * n for mb in micro for row in mb.seq_lens for n in row))
        n_tokens, n_loss_tokens, sq_all = distributed.all_reduce_sum(
            [float(local_tokens), float(local_loss_tokens), sq], self.device
        )
        scale = self.info.world_size / max(n_loss_tokens, 1.0)
        float_dtype = torch.bfloat16 if self.bf16 else torch.float32
        loss_sum = torch.zeros(
            (), dtype=torch.float64 if self.device.type == "cpu" else torch.float32, device=self.device
        )
        for i, mb in enumerate(micro):
            # Reduce-scatter gradients only after the last micro-batch of the step.
            self.model.set_requires_gradient_sync(i == len(micro) - 1)
            inputs = attention.model_inputs(
                mb.input_ids, mb.position_ids, mb.seq_lens, self.attn_implementation, float_dtype=float_dtype
            )
            logits = self.model(**inputs, use_cache=False).logits
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                mb.targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            (ce * scale).backward()
            loss_sum += ce.detach().to(loss_sum.dtype)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        lr = self.lr_schedule.lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        (loss_total,) = distributed.all_reduce_sum([float(loss_sum)], self.device)
        self.step += 1
        self.metrics.count(n_tokens, sq_all)
        return {
            "epoch": round(self.loader.epoch_of(self.step), 4),
            "loss": loss_total / max(n_loss_tokens, 1.0),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": int(n_tokens),
            "loss_tokens": int(n_loss_tokens),
        }

    # -- exports -------------------------------------------------------------------------------
    def maybe_export(self, *, last: bool) -> None:
        """``--export-every``: the model of this step into ``<out>/step-NNNNNN/``, unless already there."""
        if not self.checkpointer.should_export(self.step, last=last):
            return
        folder = self.out / f"step-{self.step:06d}"
        # Every rank must agree (export_model is a collective); rank 0, which writes, decides.
        done = self.info.is_main and self.exported(folder)
        if distributed.all_reduce_max(float(done), self.device) > 0:
            log(f"{folder} already holds the model of step {self.step}; kept", self.info)
            return
        self.export(folder)

    def exported(self, folder: Path | None = None) -> bool:
        """True when ``folder`` (default ``<out>``) holds this run's export of the current step
        (codeplan.json is written last)."""
        path = (folder or self.out) / "codeplan.json"
        if not path.is_file():
            return False
        info = json.loads(path.read_text())
        return (
            info.get("run_key") == self.run_key
            and info.get("step") == self.step
            and info.get("export", "merged") == self.export_kind
        )

    @property
    def export_kind(self) -> str:
        """merged (a plain Hugging Face folder) or adapter (peft's adapter folder; LoRA only)."""
        return self.config.lora.export if self.lora is not None else "merged"

    def export(self, folder: Path | None = None) -> Path | None:
        """Export the model of this step into ``folder`` (default ``<out>``; every rank calls it)."""
        import torch

        from .export import export_adapter, export_model

        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        dtype = self.base_dtype if self.config.export_dtype == "auto" else dtypes[self.config.export_dtype]
        info: dict[str, Any] = {
            "format": self.format.name,
            "chat_template": self.format.chat,
            "end_marker": self.format.end_marker,
            "end_token_id": self.format.end_token_id(self.tokenizer),
            "fingerprint": self.packs.fingerprint,
            "run_key": self.run_key,
            "step": self.step,
            "base_model": self.config.model,
            "export": self.export_kind,
        }
        if self.export_kind == "adapter":
            path = export_adapter(
                self.model,
                folder or self.out,
                lora=self.lora,
                dtype=dtype,
                is_main=self.info.is_main,
                info=info,
            )
        else:
            path = export_model(
                self.model,
                folder or self.out,
                tokenizer=self.tokenizer,
                tokenizer_src=self.model_dir,
                end_token_id=info["end_token_id"],
                dtype=dtype,
                is_main=self.info.is_main,
                info=info,
                lora=self.lora,
            )
        distributed.barrier()
        if path is not None:
            what = "the LoRA adapter" if self.export_kind == "adapter" else "the model"
            log(f"exported {what} to {path} (step {self.step})", self.info)
        return path

    def close(self) -> None:
        for part in (self.metrics, self.loader, self.lr_schedule, self.checkpointer):
            part.close()
        distributed.destroy_process_group()


def _config_dtype(config):
    import torch

    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, str):
        d = getattr(torch, d.replace("torch.", ""), None)
    return d if isinstance(d, torch.dtype) else torch.float32


# ---------------------------------------------------------------------------------------------
# Entry points


def preflight(config: FinetuneConfig) -> None:
    """Cheap checks before any worker starts: tensorboard, settings, files, the packs' tokenizer."""
    from codeplan_tools.core.errors import require
    from codeplan_tools.core.outputs import check_writable_folder
    from codeplan_tools.formats.tokenizer import read_fingerprint, tokenizer_fingerprint

    if config.metrics.tensorboard is not None:
        # Refused here, before any worker starts, rather than in each of them.
        require("tensorboard", "tensorboard")
        check_writable_folder(config.metrics.tensorboard, "--tensorboard")
    config.validate()
    if config.lora.enabled:
        require("peft", "lora")
    fp = read_fingerprint(config.data[0])
    if fp is None:
        raise UsageError(f"{config.data[0]}: no packs")
    mine = tokenizer_fingerprint(config.model)
    if fp.get("tokenizer") != mine:
        raise SettingsMismatch(
            f"{config.data[0]}: the packs were made with another tokenizer (fingerprint tokenizer "
            f"{str(fp.get('tokenizer'))[:12]}, the model's is {mine[:12]}); re-run `codeplan pack --model` "
            "with this model"
        )


def run(config: FinetuneConfig) -> int:
    """Fine-tune in this process (one process, torchrun or srun) or on ``config.nproc`` local workers."""
    from contextlib import nullcontext

    from codeplan_tools.core.outputs import OutputLock

    previous = STOP.install()
    try:
        preflight(config)
        nproc = config.nproc
        info = distributed.detect()
        if nproc > 1 and info.world_size > 1:
            raise UsageError(
                f"--nproc {nproc} under a launcher that already started {info.world_size} processes "
                f"({info.source}); drop --nproc"
            )
        # One run per --out: this process (the launcher of --nproc workers, or global rank 0 under
        # torchrun/srun) holds the lock for the whole run; a second run stops with exit 75. Other
        # ranks do not lock (they would block each other); if rank 0 refuses, the launcher ends them.
        with OutputLock(config.out) if info.is_main else nullcontext():
            if nproc > 1:
                log(f"starting {nproc} local workers")
                return distributed.launch_local(config.to_json(), nproc)
            return run_worker(config, info)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_worker(config: FinetuneConfig, info: distributed.DistInfo | None = None) -> int:
    info = info or distributed.detect()
    started = time.monotonic()
    try:
        trainer = Trainer(config, info)
    except BaseException:
        distributed.destroy_process_group()  # a failed start must not leave a group behind (in-process use)
        raise
    try:
        outcome = trainer.train()
    finally:
        trainer.close()
    if outcome == "done":
        log(f"done in {time.monotonic() - started:.1f}s", info)
    return 0
