"""Model averaging (`facepipe.training.average`): the EMA arithmetic, its ramp, buffers."""

from __future__ import annotations

import torch

from facepipe.training.average import weight_average


def test_the_average_follows_the_ramped_ema_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = weight_average(model, decay=0.99)
    expected = None
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves the batch-norm statistics and its batch count
        current = model[0].weight.detach().clone()
        d = min(0.99, (1 + n) / (10 + n)) if n else 0.0  # the first update copies
        expected = current if expected is None else d * expected + (1 - d) * current
        average.update_parameters(model)
    assert torch.allclose(average.module[0].weight, expected, atol=1e-6)
    assert int(average.module[1].num_batches_tracked) == 30
    assert not torch.allclose(average.module[1].running_mean, model[1].running_mean)  # averaged too
    assert int(average.n_averaged) == 30
