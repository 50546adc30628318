"""Editing an enrolled gallery in place: add or remove identities without rebuilding the rest.

Each edit is appended to the build report, the threshold is recalibrated, and the new folder is
swapped in whole, so a failed edit leaves the old gallery as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

from facepipe.config import from_dict
from facepipe.errors import DataError
from facepipe.gallery.build import GalleryConfig, enrol, load_models
from facepipe.gallery.store import Gallery, save_replacing


def _save_in_place(gallery: Gallery, gallery_dir: Path, change: dict) -> None:
    """Record the edit in the build report and swap the edited gallery in (never half-edited)."""
    report = dict(gallery.report)
    report.setdefault("edits", []).append(change)
    report["threshold"] = gallery.threshold
    report["calibration"] = gallery.calibration
    gallery.meta["modified"] = change["time"]
    save_replacing(gallery, gallery_dir, report)


def add_identities(gallery_dir, data_dir, recognizer_path, detector_path=None, replace: bool = False,
                   models=None) -> dict:
    """Enrol the identity folders in `data_dir` into an existing gallery (no rebuild of the rest).

    `models`: an already loaded `(recognizer, aligner)` pair (the service's), used instead of the paths.
    """
    gallery_dir = Path(gallery_dir)
    gallery = Gallery.load(gallery_dir, verify=True)
    cfg = from_dict(GalleryConfig, gallery.meta["config"], source=str(gallery_dir / "gallery.json"))
    recognizer, aligner = models or load_models(recognizer_path, detector_path, cfg)
    gallery.check_recognizer(recognizer.digest, recognizer.embedding_size, recognizer_path)
    names, emb, labels, records, report = enrol(cfg, data_dir, recognizer, aligner, desc="adding")
    if not names:
        raise DataError("no identity in the folder has a usable face image", path=data_dir)
    if set(names) & set(gallery.identities) and not replace:
        raise DataError(f"identities already enrolled: {sorted(set(names) & set(gallery.identities))[:10]}; "
                        "use --replace to re-enrol them", path=data_dir)
    before = gallery.threshold
    gallery.add(names, emb, labels, records, replace=replace)
    change = {"action": "add", "identities": names, "source": str(data_dir),
              "detector_digest": aligner.digest, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "problems": {k: report[k] for k in ("no_face", "several_faces", "unreadable",
                                                  "empty_identity_folders", "duplicate_identity_names")}}
    _save_in_place(gallery, gallery_dir, change)
    return {**change, "threshold_before": before, "threshold": gallery.threshold,
            "num_identities": len(gallery.identities)}


def remove_identities(gallery_dir, names: list[str]) -> dict:
    """Drop identities by name; unknown names are an error (nothing is changed)."""
    gallery_dir = Path(gallery_dir)
    gallery = Gallery.load(gallery_dir, verify=True)
    missing = [n for n in names if n not in gallery.identities]
    if missing:
        raise DataError(f"not enrolled: {missing[:10]} (the gallery has {len(gallery.identities)} identities; "
                        "see `facepipe gallery info --list`)", path=gallery_dir)
    if len(set(names)) >= len(gallery.identities):
        raise DataError("removing every identity would leave an empty gallery", path=gallery_dir)
    before = gallery.threshold
    gallery.remove(names)
    change = {"action": "remove", "identities": list(names),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save_in_place(gallery, gallery_dir, change)
    return {**change, "threshold_before": before, "threshold": gallery.threshold,
            "num_identities": len(gallery.identities)}
