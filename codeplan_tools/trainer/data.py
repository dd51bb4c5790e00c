"""Packs in, micro-batches out: reading, checking and sharding packs across ranks.

Every rank reads the same pack files and sees the same order: for epoch ``e`` the packs are
permuted with ``seed + e``, and the epochs are laid end to end into one stream of pack indices.
Step ``s`` takes the next ``world * micro_batch * grad_accum`` indices of that stream; rank ``r`` takes
its own contiguous ``micro_batch * grad_accum`` of them. So every rank runs exactly the same number of
steps, no pack is dropped (the last step of an epoch simply continues into the next permutation),
and the position in the data is a function of the step alone, which is what a resume needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from codeplan_tools.core.errors import BadRecord, SettingsMismatch, UsageError

from .config import LoaderConfig

IGNORE = -100


@dataclass
class Pack:
    """One pack, compactly: int32 token ids, a boolean loss mask and the example lengths.

    Labels of a pack are either -100 or the token itself (checked when read), so a mask holds them;
    the position ids follow from ``seq_lens`` (checked when read). About 5 bytes per token.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    seq_lens: list[int]

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def labels(self) -> np.ndarray:
        return np.where(self.loss_mask, self.input_ids.astype(np.int64), IGNORE)

    @property
    def position_ids(self) -> np.ndarray:
        return np.concatenate([np.arange(n) for n in self.seq_lens])


@dataclass
class PackSet:
    packs: list[Pack]
    fingerprint: dict
    max_len: int
    n_tokens: int
    n_loss_tokens: int


def _pack_from(rec: dict, where: tuple[str, int]) -> Pack:
    try:
        ids = np.asarray(rec["input_ids"], dtype=np.int64)
        labels = np.asarray(rec["labels"], dtype=np.int64)
        pos = np.asarray(rec["position_ids"], dtype=np.int64)
        lens = [int(x) for x in rec["seq_lens"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRecord(
            *where, f"not a pack (needs input_ids, labels, position_ids, seq_lens): {exc}"
        ) from None
    if not (ids.shape == labels.shape == pos.shape) or sum(lens) != ids.shape[0] or min(lens, default=1) <= 0:
        raise BadRecord(
            *where, "pack fields disagree: input_ids, labels, position_ids and sum(seq_lens) differ"
        )
    expect = np.concatenate([np.arange(n) for n in lens]) if lens else np.zeros(0, dtype=np.int64)
    if not np.array_equal(pos, expect):
        raise BadRecord(*where, "position_ids do not restart at 0 for each example of seq_lens")
    mask = labels != IGNORE
    if not np.array_equal(labels[mask], ids[mask]):
        raise BadRecord(*where, "labels must be -100 or the token itself")
    return Pack(ids.astype(np.int32), mask, lens)


def read_packs(paths: list[str], tokenizer_hash: str | None = None) -> PackSet:
    """Read and check every pack; refuse mixed fingerprints or a tokenizer that is not the packs' one."""
    from codeplan_tools.core.streams import iter_lines

    packs: list[Pack] = []
    fingerprint: dict | None = None
    n_loss = 0
    for name, lineno, line in iter_lines(paths):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRecord(name, lineno, f"invalid JSON: {exc}") from None
        fp = rec.get("fingerprint") if isinstance(rec, dict) else None
        if not isinstance(fp, dict):
            raise BadRecord(name, lineno, "pack has no fingerprint (make packs with `codeplan pack`)")
        if fingerprint is None:
            fingerprint = fp
            if tokenizer_hash is not None and fp.get("tokenizer") != tokenizer_hash:
                raise SettingsMismatch(
                    f"{name}: the packs were made with another tokenizer (fingerprint tokenizer "
                    f"{str(fp.get('tokenizer'))[:12]}, the model's is {tokenizer_hash[:12]}); "
                    "re-run `codeplan pack --model` with this model"
                )
        elif fp != fingerprint:
            raise SettingsMismatch(
                f"{name}:{lineno}: packs with different fingerprints are mixed "
                f"({_diff(fingerprint, fp)}); pack all inputs with the same settings"
            )
        pack = _pack_from(rec, (name, lineno))
        max_len = int(fingerprint.get("max_len") or 0)
        if max_len and pack.n_tokens > max_len:
            raise BadRecord(name, lineno, f"pack of {pack.n_tokens} tokens exceeds its max_len {max_len}")
        n_loss += int(pack.loss_mask.sum())
        packs.append(pack)
    if not packs or fingerprint is None:
        raise UsageError("no packs in the input; make them with `codeplan pack`")
    max_len = int(fingerprint.get("max_len") or max(p.n_tokens for p in packs))
    return PackSet(packs, fingerprint, max_len, sum(p.n_tokens for p in packs), n_loss)


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys) or "same"


def shifted_targets(labels: np.ndarray, seq_lens: list[int]) -> np.ndarray:
    """Target of position t = label of t+1 inside the same example; the last token of each example has none.

    Shifting per example (not per row) keeps the first token of example k+1 from being predicted
    from example k.
    """
    out = np.full_like(labels, IGNORE)
    out[:-1] = labels[1:]
    ends = np.cumsum(seq_lens) - 1
    out[ends] = IGNORE
    return out


@dataclass
class MicroBatch:
    input_ids: Any  # torch tensors (batch, L)
    position_ids: Any
    targets: Any
    seq_lens: list[list[int]] = field(default_factory=list)
    n_tokens: int = 0
    n_loss_tokens: int = 0


class PackLoader:
    """Deterministic, rank-sharded micro-batches for each step; stateless beyond the step number."""

    def __init__(self, config: LoaderConfig, packs: PackSet, *, rank: int, world_size: int, pad_id: int):
        if config.micro_batch < 1 or config.grad_accum < 1:
            raise UsageError("--micro-batch and --grad-accum must be at least 1")
        self.config = config
        self.packs = packs
        self.rank, self.world_size, self.pad_id = rank, world_size, pad_id
        self.per_rank = config.micro_batch * config.grad_accum
        self.per_step = self.per_rank * world_size
        n = len(packs.packs)
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.epochs * n / self.per_step))
        self._perms: dict[int, np.ndarray] = {}

    def _index(self, position: int) -> int:
        n = len(self.packs.packs)
        epoch, offset = divmod(position, n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng(self.config.seed + epoch).permutation(n)
            self._perms = {epoch: perm}  # keep only the current epoch's order
        return int(perm[offset])

    def pack_indices(self, step: int, rank: int | None = None) -> list[int]:
        """The packs that ``rank`` uses at ``step`` (0-based), in micro-batch order."""
        rank = self.rank if rank is None else rank
        start = step * self.per_step + rank * self.per_rank
        return [self._index(start + i) for i in range(self.per_rank)]

    def epoch_of(self, step: int) -> float:
        return step * self.per_step / len(self.packs.packs)

    def micro_batches(self, step: int, device) -> list[MicroBatch]:
        idx = self.pack_indices(step)
        mb = self.config.micro_batch
        return [
            self._collate([self.packs.packs[i] for i in idx[j : j + mb]], device)
            for j in range(0, len(idx), mb)
        ]

    def _collate(self, packs: list[Pack], device) -> MicroBatch:
        import torch

        # The longest pack, rounded up to a multiple of 8 (kernel friendly); the tail is padding, no loss.
        length = -(-max(p.n_tokens for p in packs) // 8) * 8
        ids: np.ndarray = np.full((len(packs), length), self.pad_id, dtype=np.int64)
        pos: np.ndarray = np.zeros((len(packs), length), dtype=np.int64)
        tgt: np.ndarray = np.full((len(packs), length), IGNORE, dtype=np.int64)
        for r, p in enumerate(packs):
            n = p.n_tokens
            ids[r, :n] = p.input_ids
            pos[r, :n] = p.position_ids
            pos[r, n:] = np.arange(length - n)
            tgt[r, :n] = shifted_targets(p.labels, p.seq_lens)
        return MicroBatch(
            input_ids=torch.from_numpy(ids).to(device),
            position_ids=torch.from_numpy(pos).to(device),
            targets=torch.from_numpy(tgt).to(device),
            seq_lens=[p.seq_lens for p in packs],
            n_tokens=sum(p.n_tokens for p in packs),
            n_loss_tokens=int((tgt != IGNORE).sum()),
        )

    def state_dict(self) -> dict:
        return {"n_packs": len(self.packs.packs), "per_step": self.per_step, "seed": self.config.seed}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        if state and state != mine:
            raise SettingsMismatch(f"the checkpoint's data layout differs: {_diff(state, mine)}")

    def close(self) -> None:
        pass
