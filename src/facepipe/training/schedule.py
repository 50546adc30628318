"""The LR schedule of every trainer: linear warmup, then poly, cosine, constant or step decay,
fitted to the step count or stretched over a wall-clock budget (`time_budget_min`)."""

from __future__ import annotations

import math
import time

from facepipe.errors import ConfigError

SCHEDULES = ["poly", "cosine", "constant", "step"]
WARMUP_BUDGET_SHARE = 0.1


def check_schedule(cfg) -> None:
    if cfg.schedule == "step" and not all(0 < s < 1 for s in cfg.lr_steps):
        raise ConfigError(f"{type(cfg).__name__}.lr_steps: {cfg.lr_steps}; expected fractions in (0, 1)")


def lr_factor(step: int, total: int, warmup: int, schedule: str, time_fraction: float = 0.0,
              milestones=(), gamma: float = 0.1) -> float:
    """Multiplies cfg.lr at `step` (0-based). Polynomial decay has power 2; `step` multiplies by
    `gamma` at each of the `milestones` (fractions of the whole run, warmup included).

    With a time budget, decay progress is the larger of the step and the elapsed-time fractions,
    and warmup ends after at most 10% of the budget (a slow machine may not reach `warmup` steps).
    """
    if step < warmup and time_fraction < WARMUP_BUDGET_SHARE:
        return max((step + 1) / warmup, time_fraction / WARMUP_BUDGET_SHARE)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(step >= f * total or time_fraction >= f for f in milestones)
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 2


class TimeBudget:
    """Share of `minutes` used so far, as rank 0 measures it (ranks must stop at the same step)."""

    def __init__(self, minutes: float, ctx):
        self.minutes, self.ctx, self.fraction, self.start = minutes, ctx, 0.0, time.perf_counter()

    def update(self) -> None:
        if self.minutes:
            self.fraction = self.ctx.broadcast((time.perf_counter() - self.start) / (self.minutes * 60.0))

    @property
    def spent(self) -> bool:
        return self.fraction >= 1.0


def lr_scheduler(optimizer, cfg, total: int, warmup: int, budget: TimeBudget):
    """LambdaLR over `lr_factor` with the config's schedule keys; its state resumes with the run."""
    import torch  # here: the configs import SCHEDULES, and loading a config needs no torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total, warmup, cfg.schedule, budget.fraction, cfg.lr_steps, cfg.gamma))
