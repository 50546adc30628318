"""Model-like folders for storage tests: a multipart-sized weights file and small nested files."""

from __future__ import annotations

import json
import random
from pathlib import Path


def make_model_folder(root: Path, big_mb: int = 11, small: int = 12, seed: int = 0) -> Path:
    """A model-like folder: one multipart-sized weights file, small files in nested folders."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "model.pt").write_bytes(rng.randbytes(big_mb << 20))
    for i in range(small):
        sub = root / "plots" if i % 2 else root / "eval" / "per_identity"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"part{i}.json").write_text(json.dumps({"i": i, "v": rng.random()}))
    (root / "empty.txt").write_bytes(b"")
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != "manifest.json"}
