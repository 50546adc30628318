"""ONNX export of a RetinaFace model (dynamic batch/height/width), checked against PyTorch with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facepipe.errors import FacepipeError


class ExportedRetinaFace(nn.Module):
    """The graph users run: raw box/landmark offsets (decode with the priors) and face probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        boxes, logits, landmarks = self.model(x)
        return boxes, torch.softmax(logits, dim=-1)[..., 1], landmarks


def export_onnx(model: nn.Module, path: str | Path, image_size: int, tolerance: float = 1e-3) -> dict:
    """Write `path` and return {"onnx.max_abs_diff": ...}; raises if onnxruntime disagrees with torch.

    The check runs a different batch size and a non-square size than the export trace, so the
    dynamic axes are exercised too.
    """
    import onnxruntime as ort

    model = model.eval().cpu()
    wrapper = ExportedRetinaFace(model).eval()
    stride = 32
    trace = torch.zeros(1, 3, image_size, image_size)
    # The TorchScript exporter: the torch.export one needs onnxscript, which is not a dependency.
    # It warns that it is deprecated; the warning is not the user's to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (trace,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["boxes", "scores", "landmarks"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                        "boxes": {0: "batch", 1: "priors"}, "scores": {0: "batch", 1: "priors"},
                                        "landmarks": {0: "batch", 1: "priors"}})
    generator = torch.Generator().manual_seed(0)
    h = max(stride, (image_size // 2) // stride * stride)
    check = torch.rand(2, 3, h, h + stride, generator=generator) * 255 - 117
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(check)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": check.numpy()})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    if diff > tolerance:
        raise FacepipeError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} (> {tolerance:g})")
    return {"onnx.max_abs_diff": diff}
