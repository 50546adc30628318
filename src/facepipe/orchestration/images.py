"""Which container image each component runs in: references pinned by digest from the images lock.

`make push-images` writes `images/images.lock.json`:
`{"registry": R, "images": {"facepipe-data": {"tag", "digest", "reference": "R/facepipe-data@sha256:...",
"torch_variant": "none"}, "facepipe-train": {..., "torch_variant": "cpu" | "cuda"}}}`.
Components read it when they are defined (at compile time), so pipeline.yaml names immutable
digests: on a KFP backend the cache key includes the image reference, and a mutable tag would
give stale cache hits. Without a lock, compiling fails, unless the developer explicitly allows
unpinned names (`FACEPIPE_ALLOW_UNPINNED_IMAGES=1`), which are then visibly flagged in the name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from facepipe.config import project_file
from facepipe.errors import ConfigError
from facepipe.steps import DATA_IMAGE, TRAIN_IMAGE  # noqa: F401  (each step's image is in its record)

DEFAULT_LOCK = project_file("images/images.lock.json")
LOCK_ENV = "FACEPIPE_IMAGES_LOCK"
UNPINNED_ENV = "FACEPIPE_ALLOW_UNPINNED_IMAGES"

UNPINNED_TAG = "unpinned-dev"


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_ENV) or DEFAULT_LOCK)


def read_lock(path: str | Path | None = None) -> dict:
    path = Path(path) if path else lock_path()
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: images lock not found; run `make push-images` to build and push the images "
            f"and write it (or, for local development only, set {UNPINNED_ENV}=1 to compile with "
            f"unpinned image names)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: images lock is not valid JSON: {exc}") from None
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, dict):
        raise ConfigError(f"{path}: expected an 'images' mapping of name -> {{tag, digest, reference}}")
    return body


def image_reference(name: str, path: str | Path | None = None) -> str:
    """`registry/name@sha256:...` for one of the project's images."""
    path = Path(path) if path else lock_path()
    if not path.exists() and os.environ.get(UNPINNED_ENV) == "1":
        return f"{name}:{UNPINNED_TAG}"
    images = read_lock(path)["images"]
    entry = images.get(name)
    if not isinstance(entry, dict) or "reference" not in entry:
        raise ConfigError(f"{path}: no entry for image {name!r}; images in the lock: {sorted(images)}")
    ref = entry["reference"]
    if "@sha256:" not in ref:
        raise ConfigError(f"{path}: image {name!r} reference {ref!r} is not pinned by digest (expected NAME@sha256:...)")
    return ref


def torch_variant(name: str, body: dict) -> str:
    """The torch build a locked image holds ("cpu", "cuda", "none"); "" where the lock does not say
    (written before the lock recorded it)."""
    entry = body.get("images", {}).get(name)
    return str(entry.get("torch_variant", "")) if isinstance(entry, dict) else ""


def image_digests(path: str | Path | None = None) -> dict[str, str]:
    """name -> reference, for MLflow tags; empty when there is no lock."""
    try:
        return {name: entry.get("reference", "") for name, entry in read_lock(path)["images"].items()}
    except ConfigError:
        return {}
