"""Recognition test data: the shared synthetic faces packed at 64 px, and tiny model settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# A narrow IResNet-18 at 56 px: the same topology as the real thing, ~0.1 s per step on one core.
TINY = {"backbone": "iresnet18", "width": 0.25, "input_size": 56, "embedding_size": 32,
        "batch_size": 16, "workers": 0, "lr": 0.05, "scale": 16.0, "log_every": 1,
        "export_onnx": False}


@pytest.fixture(scope="session")
def face_rec(synth_small, tmp_path_factory) -> Path:
    """synth_small's 16 identities x 10 faces packed at 64 px, plus its pairs file and images."""
    from facepipe.data.pack import PackConfig, pack

    out = tmp_path_factory.mktemp("face_rec")
    pack(PackConfig(size=64, workers=1), synth_small / "faces", out, progress=False)
    shutil.copy(synth_small / "faces_pairs.txt", out / "faces_pairs.txt")
    (out / "images").symlink_to(synth_small / "faces_eval")
    return out


@pytest.fixture
def tiny_cfg():
    """RecognitionTrainConfig with TINY settings plus overrides."""
    from facepipe.config import from_dict
    from facepipe.recognition.config import RecognitionTrainConfig

    return lambda **kw: from_dict(RecognitionTrainConfig, {**TINY, **kw})
