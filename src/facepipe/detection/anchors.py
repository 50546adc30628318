"""Prior (anchor) boxes: per pyramid level, `len(min_sizes[k])` square priors centred on each cell.

Order matches the heads' flattening: level, then row, then column, then anchor size. Priors are
(cx, cy, w, h) normalised by the input width/height; a 640x640 input has 16,800 of them.
"""

from __future__ import annotations

import math

import torch


def prior_boxes(height: int, width: int, min_sizes, steps) -> torch.Tensor:
    rows = []
    for sizes, step in zip(min_sizes, steps):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys = (torch.arange(fh, dtype=torch.float32) + 0.5) * step / height
        xs = (torch.arange(fw, dtype=torch.float32) + 0.5) * step / width
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        per_size = [torch.stack([cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], -1)
                    for s in sizes]
        rows.append(torch.stack(per_size, dim=2).reshape(-1, 4))
    return torch.cat(rows, dim=0)
