"""The step loop both trainers run: forward, finite check, (scaled) backward, clipping, optimizer and
LR steps; then `StepLog`: metrics to the RunLogger, progress, checkpoint cadence, when to stop."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from facepipe.progress import Progress


@dataclass
class TrainState:
    """Where training is: saved in every checkpoint so a resume continues at the next batch."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)  # one dict of mean metrics per log line

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


def train_steps(state: TrainState, loader, forward: Callable, optimizer, scheduler, scaler, params: list,
                clip_grad: float, on_step: Callable[[TrainState, dict], bool], checkpoints, hint: str = "",
                after_backward: Callable | None = None) -> bool:
    """One pass over `loader` (an epoch, or the rest of a run for a multi-epoch sampler that already
    skips the batches done before a resume). `forward(batch)` -> (loss, metrics, samples in batch).
    After each step `on_step(state, metrics)` returns False to stop; then this returns False."""
    tick = time.perf_counter()
    for batch in loader:
        loss, metrics, samples = forward(batch)
        checkpoints.check_finite(loss, state.step + 1, f"lower lr (now {scheduler.get_last_lr()[0]:.4g}){hint}")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if after_backward is not None:
            after_backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        state.step += 1
        state.batch_in_epoch += 1
        now = time.perf_counter()
        metrics = {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0], **metrics,
                   "samples_per_s": samples * checkpoints.ctx.world / max(now - tick, 1e-9)}
        tick = now
        if not on_step(state, metrics):
            return False
    return True


class StepLog:
    """After every step: each `log_every` steps the mean metrics since the last line go to the logger
    (`train.*`, rank 0) and `state.history`; progress; `save()` every `checkpoint_every` steps and
    at each epoch end. Returns False once `total_steps` or the time budget is reached."""

    def __init__(self, cfg, ctx, logger, desc: str, state: TrainState, total_steps: int, steps_per_epoch: int,
                 budget, save: Callable[[], object]):
        self.cfg, self.ctx, self.logger, self.total, self.spe = cfg, ctx, logger, total_steps, steps_per_epoch
        self.budget, self.save, self.window, self.rates = budget, save, [], []
        # with a time budget the step count is unknown: show rate, not a misleading ETA
        self.progress = Progress(None if cfg.time_budget_min else total_steps, desc, unit="step", enabled=ctx.main)
        self.progress.n = state.step

    def __call__(self, state: TrainState, metrics: dict) -> bool:
        self.budget.update()
        self.window.append(metrics)
        self.rates.append(metrics["samples_per_s"])
        if state.step % self.cfg.log_every == 0 or state.step == self.total:
            mean = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[-1]} | {"lr": metrics["lr"]}
            state.history.append({"step": state.step, **mean})
            if self.ctx.main:
                self.logger.log_metrics({f"train.{k}": v for k, v in mean.items()}
                                        | {"train.epoch": state.step / self.spe}, step=state.step)
            self.window.clear()
        self.progress.update(1, epoch=state.step / self.spe, loss=metrics["loss"], lr=metrics["lr"],
                             **{"samples/s": metrics["samples_per_s"]})
        if (self.cfg.checkpoint_every and state.step % self.cfg.checkpoint_every == 0) or state.step % self.spe == 0:
            self.save()
        return state.step < self.total and not self.budget.spent
