"""Detection test data: tiny synthetic scenes (128 px) and a helper for hand-made label trees."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

TINY = dict(image_size=64, batch_size=2, epochs=2, lr=0.01, warmup_epochs=0.5, checkpoint_every=0, log_every=1,
            export_onnx=False, eval_max_images=2, crop_scales=[0.6, 1.0])


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """`detection/` of a synthetic set: ~56 train / 12 val scenes of ~128 px with 1-3 faces."""
    from facepipe.data.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("det_scenes")
    synthesize(SynthConfig(identities=1, images=1, eval_identities=0, scenes=70, scene_size=128,
                           faces_per_scene_min=1, faces_per_scene_max=3, min_face=16, val_fraction=0.18,
                           test_fraction=0.02, negative_fraction=0.05, seed=3), out)
    return out / "detection"


def write_tree(split_dir: Path, label_text: str, images: dict[str, tuple[int, int]]) -> Path:
    """A SPLIT folder with grey JPEGs of the given (width, height) and the given label.txt text."""
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    for name, (w, h) in images.items():
        img = np.full((h, w, 3), 127, np.uint8)
        cv2.circle(img, (w // 2, h // 2), min(w, h) // 4, (200, 180, 160), -1)
        cv2.imwrite(str(split_dir / "images" / name), img)
    (split_dir / "label.txt").write_text(label_text)
    return split_dir
