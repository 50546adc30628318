"""ONNX export of a recognizer backbone, checked against PyTorch with onnxruntime.

The ONNX graph takes float RGB `(N, 3, S, S)` scaled to [-1, 1] (`(x - 127.5) / 127.5`, the
InsightFace convention) and returns un-normalised `(N, D)` embeddings; N is dynamic.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from facepipe.errors import FacepipeError


def export_onnx(backbone: torch.nn.Module, input_size: int, path: str | Path, atol: float = 1e-3) -> float:
    """Write `path` and return the largest |onnx - torch| difference on a random batch.

    Raises when onnxruntime disagrees with PyTorch by more than `atol` (relative to the output scale).
    """
    import onnxruntime as ort

    path = Path(path)
    model = copy.deepcopy(backbone).float().cpu().eval()
    example = torch.randn(2, 3, input_size, input_size)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(model, (example,), str(tmp), input_names=["faces"], output_names=["embeddings"],
                      dynamic_axes={"faces": {0: "batch"}, "embeddings": {0: "batch"}},
                      opset_version=17, dynamo=False)
    probe = torch.randn(3, 3, input_size, input_size)
    with torch.no_grad():
        expected = model(probe).numpy()
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"faces": probe.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))
    if diff > atol:
        tmp.unlink(missing_ok=True)
        raise FacepipeError(f"ONNX export disagrees with PyTorch (max relative difference {diff:.3g} > {atol})")
    tmp.replace(path)
    return diff
