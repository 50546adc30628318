"""What the trainers' resume tests share: interrupting a finished run, comparing shipped weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from facepipe.training.checkpoint import latest_checkpoint


def rewind_one_checkpoint(out_dir: Path) -> Path:
    """A finished run made to look interrupted: its newest checkpoint and model.pt removed.
    Returns the checkpoint a rerun in `out_dir` resumes from."""
    shutil.rmtree(latest_checkpoint(out_dir))
    (Path(out_dir) / "model.pt").unlink()
    return latest_checkpoint(out_dir)


def assert_same_weights(a: Path, b: Path) -> None:
    """The two model.pt files hold the same tensors under the same keys, bit for bit."""
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
