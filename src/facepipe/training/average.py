"""Model averaging: an exponential moving average (EMA) of a model's weights and batch-norm
statistics, kept beside training and shipped instead of the last weights (the "model EMA" of
timm and arcface_torch's successors), on torch's own `AveragedModel`."""

from __future__ import annotations

import torch


def weight_average(model: torch.nn.Module, decay: float) -> torch.nn.Module:
    """An `AveragedModel` of `model` whose `update_parameters(model)` moves every parameter and
    buffer towards the model's by `1 - d`, where `d = min(decay, (1 + n) / (10 + n))` after n
    updates: the ramp keeps a short run from carrying its random start. Integer buffers (batch
    counts) are copied. Its `state_dict` (weights and the update count) resumes with the run."""
    from torch.optim.swa_utils import AveragedModel

    def ema(averaged: list, current: list, updates: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            for a, c in zip(averaged, current):
                a.copy_(c)
            return
        n = int(updates)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return AveragedModel(model, multi_avg_fn=ema, use_buffers=True)
