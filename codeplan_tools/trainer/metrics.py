"""One flat dict per logging step: a JSON line on stdout and a readable line on stderr (rank 0 only).

Keys: ``step``, ``epoch``, ``loss`` (mean per loss token over the whole step, all ranks), ``lr``,
``grad_norm`` (before clipping), ``tokens`` and ``loss_tokens`` (this step, all ranks),
``tokens_per_s`` (non-padding tokens, all ranks, since the previous logged step), ``mfu`` (model
FLOPs utilisation per device; ``null`` where the device's peak is unknown, e.g. on CPU),
``peak_mem_gib`` (GPU: peak allocated memory; CPU: the process's peak resident set), ``elapsed_s``.

With ``MetricsConfig.tensorboard`` (``--tensorboard DIR``), rank 0 also writes every numeric key
of each line but ``step`` as a TensorBoard scalar ``train/<key>`` at that step (``mfu`` only where
it is known), flushed at each logged step so a killed run keeps what it logged; a resumed run adds
an event file to DIR and TensorBoard joins them by step. The JSON lines are written all the same.
This needs the ``tensorboard`` package (``pip install 'codeplan[tensorboard]'``); without it the
run stops before training with a one-line error naming that extra.

MFU uses ``6 * N + 12 * layers * hidden * T`` FLOPs per token, N the non-embedding parameters and T
the mean length attended to (sum of squared example lengths / tokens), so packing with
confined attention is not credited for attention it does not compute. A frozen parameter (the base
of a LoRA run) counts 4 FLOPs, not 6: backward computes no gradient for it.
"""

from __future__ import annotations

import resource
import sys
import time

import orjson

from .config import MetricsConfig

# Dense bf16 peak FLOP/s per device (no sparsity), matched by substring of the CUDA device name.
PEAK_BF16_FLOPS = (
    ("B200", 2.25e15),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A6000", 155e12),
    ("A40", 150e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def peak_flops(device, bf16: bool) -> float | None:
    """The device's dense bf16 peak, or None (CPU, unknown GPU, or fp32 training)."""
    if device.type != "cuda" or not bf16:
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def model_flops(model) -> tuple[int, int, int]:
    """(non-embedding parameters, layers, hidden size) for the FLOPs estimate."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    emb = sum(m.weight.numel() for m in [model.get_input_embeddings()] if m is not None)
    return total - emb, int(cfg.num_hidden_layers), int(cfg.hidden_size)


def frozen_params(model) -> int:
    """Non-embedding parameters that do not require grad (a LoRA run's base model)."""
    emb = model.get_input_embeddings()
    skip = {id(emb.weight)} if emb is not None else set()
    return sum(p.numel() for p in model.parameters() if not p.requires_grad and id(p) not in skip)


def peak_mem_gib(device) -> float:
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def tensorboard_writer(folder: str):
    """A ``SummaryWriter`` on ``folder``; ``MissingDependency`` naming the extra without tensorboard."""
    from codeplan_tools.core.errors import require

    require("tensorboard", "tensorboard")  # torch's writer needs it; name the extra, not torch's message
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=folder)


class Metrics:
    def __init__(self, config: MetricsConfig, *, model, device, world_size: int, bf16: bool, is_main: bool):
        self.config = config
        self.device = device
        self.world_size = world_size
        self.is_main = is_main
        self.n_params, self.n_layers, self.hidden = model_flops(model)
        self.n_frozen = frozen_params(model)
        self.peak = peak_flops(device, bf16)
        self._t0 = time.monotonic()
        self._last_t = self._t0
        self._tokens = 0.0
        self._attn = 0.0
        self._board = tensorboard_writer(config.tensorboard) if config.tensorboard and is_main else None

    def should_log(self, step: int, last: bool = False) -> bool:
        return last or self.config.log_every <= 1 or step % self.config.log_every == 0

    def count(self, tokens: float, sq_lens: float) -> None:
        """Add a step's tokens (all ranks) and sum of squared example lengths (all ranks)."""
        self._tokens += tokens
        self._attn += sq_lens

    def build(self, **values) -> dict:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        tps = self._tokens / dt
        mfu = None
        if self.peak and self._tokens:
            mean_ctx = self._attn / self._tokens
            per_token = 6 * self.n_params - 2 * self.n_frozen + 12 * self.n_layers * self.hidden * mean_ctx
            mfu = tps * per_token / (self.world_size * self.peak)
        out = dict(values)
        out.update(
            tokens_per_s=round(tps, 1),
            mfu=None if mfu is None else round(mfu, 4),
            peak_mem_gib=round(peak_mem_gib(self.device), 3),
            elapsed_s=round(now - self._t0, 3),
        )
        self._last_t, self._tokens, self._attn = now, 0.0, 0.0
        return out

    def log(self, step: int, *, last: bool = False, **values) -> dict | None:
        if not self.should_log(step, last):
            return None
        d = self.build(step=step, **values)
        if self.is_main:
            sys.stdout.write(orjson.dumps(d).decode() + "\n")
            sys.stdout.flush()
            print(readable(d), file=sys.stderr, flush=True)
            if self._board is not None:
                self._scalars(d)
        return d

    def _scalars(self, d: dict) -> None:
        if self._board is None:
            return
        for key, value in d.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._board.add_scalar(f"train/{key}", value, d["step"])
        self._board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


def readable(d: dict) -> str:
    mfu = "-" if d.get("mfu") is None else f"{100 * d['mfu']:.1f}%"
    return (
        f"step {d['step']}: loss {d['loss']:.4f} | lr {d['lr']:.2e} | grad_norm {d['grad_norm']:.3f} | "
        f"{d['tokens_per_s']:.0f} tok/s | mfu {mfu} | mem {d['peak_mem_gib']:.2f} GiB"
    )
