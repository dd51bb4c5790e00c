"""Linear warmup, then cosine decay to ``min_lr_ratio * lr``.

The learning rate is a function of the step alone, so the checkpointed state is just the step.
It is written straight into the optimizer's param groups (no torch LRScheduler: their state and
``last_epoch`` conventions have shifted between versions).
"""

from __future__ import annotations

import math

from .config import LRConfig


class WarmupCosine:
    def __init__(self, config: LRConfig, optimizer, total_steps: int):
        self.config = config
        self.optimizer = optimizer
        self.total_steps = max(1, total_steps)
        w = config.warmup_steps if config.warmup_steps >= 0 else round(config.warmup_ratio * self.total_steps)
        self.warmup_steps = min(w, self.total_steps)
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer update number ``step + 1`` (0-based ``step``)."""
        c = self.config
        if step < self.warmup_steps:
            return c.lr * (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = c.lr * c.min_lr_ratio
        return floor + (c.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def lr(self) -> float:
        return self.lr_at(self.last_step)

    def _apply(self) -> None:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def step(self) -> None:
        """Advance after an optimizer step; sets the rate of the next one."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state.get("last_step", 0))
        self._apply()

    def close(self) -> None:
        pass
