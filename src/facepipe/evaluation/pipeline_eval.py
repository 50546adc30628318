"""The pipeline's evaluate step: verification, identification and detection on the synthetic data.

Inputs are the synth step's folder (`faces/`, `faces_eval/`, `faces_pairs.txt`, `detection/`), the
trained detector and recognizer, and optionally the built gallery. Each part runs when its inputs
exist and is skipped otherwise, with the reason recorded, so one metrics.json always has the same
keys (None for a skipped part). report.md and report.html show the numbers and embed the plots.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.config import bounded, to_dict
from facepipe.errors import DataError
from facepipe.manifest import write_manifest
from facepipe.run_logger import NullLogger, RunLogger

# Headline keys present in every metrics.json (None when their part was skipped).
STABLE_KEYS = (
    "verification.accuracy", "verification.auc", "verification.tar_at_far_1e-2", "verification.tar_at_far_1e-3",
    "identification.rank1", "identification.rank5", "identification.dir_at_far_1e-1",
    "identification.dir_at_far_1e-2", "identification.dir_at_far_1e-3",
    "identification.far_at_gallery_threshold", "identification.num_gallery", "identification.num_mated", "identification.num_nonmated",
    "detection.ap50",
)
PARTS = ("verification", "identification", "detection")


@dataclass
class EvaluateConfig:
    """Which parts to run and how the synthetic faces are split into gallery and probes."""

    verification: bool = True
    identification: bool = True
    detection: bool = True
    enrol_per_identity: int = bounded(3, low=1, help="without a gallery: first K images per identity enrolled, "
                                                     "the rest are probes")
    # Faces of verification and identification aligned on the detector's landmarks (center crop
    # where it finds none or they are implausible: counted in `*.alignment.fallback`).
    align_faces_with_detector: bool = True
    detection_split: str = "test"
    detection_max_images: int = bounded(0, low=0, help="0: every image of the split")
    batch_size: int = bounded(64, low=1)


def _identification(cfg: EvaluateConfig, data: Path, recognizer, aligner, gallery_dir, out: Path) -> dict:
    from facepipe.evaluation.identification import embed_tree, identification_metrics, plot_identification
    from facepipe.gallery.build import GalleryConfig, make_gallery
    from facepipe.gallery.store import Gallery

    faces = data / "faces"
    if not faces.is_dir():
        raise _Skip(f"no identity folders at {faces}")
    aligner.reset()
    emb, names, files, embedded = embed_tree(faces, recognizer, aligner, cfg.batch_size, "embedding faces")
    if gallery_dir is not None:
        gallery = Gallery.load(gallery_dir, verify=True)
        gallery.check_recognizer(recognizer.digest, recognizer.embedding_size)
        enrolled = {(r["identity"], Path(r["file"]).name) for r in gallery.images if r.get("row") is not None}
        probe = np.array([(n, Path(f).name) not in enrolled for n, f in zip(names, files)], bool)
        source = f"gallery {gallery_dir}"
    else:
        seen: dict[str, int] = {}
        probe = np.zeros(len(names), bool)
        for i, n in enumerate(names):
            seen[n] = seen.get(n, 0) + 1
            probe[i] = seen[n] > cfg.enrol_per_identity
        enrol_idx = np.flatnonzero(~probe)
        identities = sorted({names[i] for i in enrol_idx})
        labels = np.array([identities.index(names[i]) for i in enrol_idx], np.int32)
        records = [{**embedded[i], "row": j} for j, i in enumerate(enrol_idx)]
        gallery = make_gallery(GalleryConfig(), identities, emb[enrol_idx], labels, records, recognizer,
                               aligner, str(faces))
        source = f"first {cfg.enrol_per_identity} images per identity of {faces}"
    mated = probe & np.isin(np.array(names, dtype=object), np.array(gallery.identities, dtype=object))
    if not mated.any():
        raise _Skip("every image of an enrolled identity is in the gallery: no probes left "
                    "(build the gallery with max_images_per_identity=K to leave probes)")
    distractors = None
    if (data / "faces_eval").is_dir():
        distractors = embed_tree(data / "faces_eval", recognizer, aligner, cfg.batch_size, "embedding faces_eval")[0]
    probe_idx = np.flatnonzero(probe)
    metrics, details = identification_metrics(gallery, emb[probe_idx], [names[i] for i in probe_idx], distractors)
    sub = out / "identification"
    sub.mkdir(parents=True, exist_ok=True)
    plots = plot_identification(details, sub, "(synthetic)")
    metrics["identification.source"] = source
    metrics.update(aligner.summary("identification."))
    return {"metrics": metrics, "plots": plots}


class _Skip(Exception):
    """A part whose inputs are missing: recorded in metrics.json, not an error."""


def _verification(cfg, data: Path, recognizer_path, detector_path, out: Path) -> dict:
    from facepipe.evaluation.verification_step import evaluate_verification

    pairs = data / "faces_pairs.txt"
    if not pairs.is_file() or not (data / "faces_eval").is_dir():
        raise _Skip(f"no generated pairs ({pairs} and faces_eval/)")
    sub = out / "verification"
    metrics = evaluate_verification(recognizer_path, pairs, data / "faces_eval", sub,
                                    detector_path if cfg.align_faces_with_detector else None)
    return {"metrics": metrics, "plots": sorted(sub.glob("*.png"))}


def _detection(cfg, data: Path, detector_path, out: Path) -> dict:
    from facepipe.detection.evaluate import evaluate_detection

    if detector_path is None:
        raise _Skip("no detector given")
    labelled = data / "detection"
    if not labelled.is_dir():
        raise _Skip(f"no labelled scenes at {labelled}")
    sub = out / "detection"
    metrics = evaluate_detection(detector_path, labelled, sub, split=cfg.detection_split,
                                 max_images=cfg.detection_max_images)
    return {"metrics": metrics, "plots": sorted(sub.glob("*.png"))}


def evaluate_pipeline(cfg: EvaluateConfig, data_dir, detector_path, recognizer_path, gallery_dir, out_dir,
                      logger: RunLogger = NullLogger()) -> dict:
    """Run the enabled parts; write OUT/metrics.json, OUT/report.md, OUT/report.html, plots, manifest."""
    from facepipe.gallery.align import FaceAligner
    from facepipe.gallery.build import fallback_crop
    from facepipe.recognition.embed import Recognizer

    t0 = time.time()
    data, out = Path(data_dir), Path(out_dir)
    if not data.is_dir():
        raise DataError("evaluation data folder not found (expected the synth step's output)", path=data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    recognizer = aligner = None
    if recognizer_path is not None and (cfg.verification or cfg.identification):
        recognizer = Recognizer.load(str(recognizer_path))
        aligner = FaceAligner(detector_path if cfg.align_faces_with_detector else None,
                              center_crop=fallback_crop(None, recognizer))  # one for every part
    for part in PARTS:
        if not getattr(cfg, part):
            skipped[part] = "disabled in the config"
            continue
        try:
            if part in ("verification", "identification") and recognizer is None:
                raise _Skip("no recognizer given")
            if part == "verification":
                results[part] = _verification(cfg, data, recognizer_path, detector_path, out)
            elif part == "identification":
                results[part] = _identification(cfg, data, recognizer, aligner, gallery_dir, out)
            else:
                results[part] = _detection(cfg, data, detector_path, out)
        except _Skip as reason:
            skipped[part] = str(reason)
    metrics: dict = {key: None for key in STABLE_KEYS}
    for r in results.values():
        metrics.update(r["metrics"])
    metrics["evaluate.skipped"] = skipped
    metrics["evaluate.seconds"] = round(time.time() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    plots = [p for r in results.values() for p in r["plots"]]
    write_report(out, metrics, plots, {"data": str(data), "detector": str(detector_path),
                                       "recognizer": str(recognizer_path), "gallery": str(gallery_dir),
                                       "config": json.dumps(to_dict(cfg))})
    logger.log_metrics({k: v for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for p in [out / "metrics.json", out / "report.html", *plots]:
        logger.log_artifact(p)
    write_manifest(out, "evaluate", {"skipped": skipped})
    return metrics


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_report(out: Path, metrics: dict, plots: list[Path], inputs: dict) -> None:
    """report.md and a self-contained-enough report.html (plots referenced beside it)."""
    rows = [(k, _fmt(v)) for k, v in sorted(metrics.items()) if not isinstance(v, dict)]
    skipped = metrics.get("evaluate.skipped", {})
    rel = [p.relative_to(out).as_posix() for p in plots]
    md = ["# facepipe evaluation", "", "| metric | value |", "|---|---|"]
    md += [f"| `{k}` | {v} |" for k, v in rows]
    if skipped:
        md += ["", "## Skipped", ""] + [f"- **{k}**: {v}" for k, v in skipped.items()]
    md += ["", "## Inputs", ""] + [f"- {k}: `{v}`" for k, v in inputs.items()]
    md += ["", "## Plots", ""] + [f"![{r}]({r})" for r in rel]
    (out / "report.md").write_text("\n".join(md) + "\n")
    esc = html.escape
    body = ["<!doctype html><html><head><meta charset='utf-8'><title>facepipe evaluation</title>",
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
            "img{max-width:520px;margin:6px;border:1px solid #ddd}</style></head><body>",
            "<h1>facepipe evaluation</h1><table><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td><code>{esc(k)}</code></td><td>{esc(v)}</td></tr>" for k, v in rows]
    body.append("</table>")
    if skipped:
        body.append("<h2>Skipped</h2><ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>"
                                                    for k, v in skipped.items()) + "</ul>")
    body.append("<h2>Inputs</h2><ul>" + "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>"
                                                for k, v in inputs.items()) + "</ul>")
    body.append("<h2>Plots</h2>" + "".join(f"<figure style='display:inline-block'><img src='{esc(r)}'>"
                                           f"<figcaption>{esc(r)}</figcaption></figure>" for r in rel))
    body.append("</body></html>")
    (out / "report.html").write_text("\n".join(body))
