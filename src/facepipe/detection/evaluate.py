"""Detection evaluation: AP at IoU 0.5 (all-point interpolation), PR curves, easy/medium/hard, recall at FPPI.

Difficulty is by face size where the set has no official split (WIDER FACE style, cumulative):
`easy` scores faces of size sqrt(w*h) >= 48 px, `medium` >= 24 px, `hard` all faces. Faces outside a
subset are ignored there: a detection matching one is neither a true nor a false positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facepipe.run_logger import NullLogger

SUBSETS = {"easy": 48.0, "medium": 24.0, "hard": 0.0}
FPPI_POINTS = (0.1, 1.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:4] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:4] - b[:, :2], 0, None).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_image(dets: np.ndarray, gts: np.ndarray, iou_threshold: float, min_size: float,
                ignore: np.ndarray | None = None):
    """Per detection (score, outcome) with outcome 1 = TP, 0 = FP, -1 = matched an ignored face
    (one below `min_size`, or one of the `ignore` boxes: faces a set knows of but does not score)."""
    dets = dets[np.argsort(-dets[:, 4])] if len(dets) else dets.reshape(0, 5)
    sizes = np.sqrt(np.clip(gts[:, 2] - gts[:, 0], 0, None) * np.clip(gts[:, 3] - gts[:, 1], 0, None))
    ignored = sizes < min_size
    if ignore is not None and len(ignore):
        gts = np.concatenate([gts[:, :4], np.asarray(ignore, np.float64).reshape(-1, 4)])
        ignored = np.concatenate([ignored, np.ones(len(ignore), bool)])
    outcome = np.zeros(len(dets), np.int8)
    if len(gts) and len(dets):
        overlaps = box_iou(dets[:, :4], gts[:, :4])
        taken = np.zeros(len(gts), bool)
        for i in range(len(dets)):
            j = int(overlaps[i].argmax())
            if overlaps[i, j] < iou_threshold:
                continue
            if ignored[j]:
                outcome[i] = -1
            elif not taken[j]:
                taken[j] = True
                outcome[i] = 1
    return dets[:, 4] if len(dets) else np.zeros(0), outcome, int((~ignored).sum())


def all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the PR curve with precision made monotone (VOC 2010+ all-point interpolation)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def pr_curve(predictions: list[np.ndarray], ground_truth: list[np.ndarray], iou_threshold: float = 0.5,
             min_size: float = 0.0, ignore: list[np.ndarray] | None = None) -> dict:
    """Precision/recall/FPPI arrays over all images. predictions: (K, >=5) xyxy+score; gts: (M, >=4) xyxy;
    ignore: per image (J, 4) xyxy boxes that count neither way."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} images")
    scores, outcomes, num_gt = [], [], 0
    for i, (dets, gts) in enumerate(zip(predictions, ground_truth)):
        dets = np.asarray(dets, np.float64)
        gts = np.asarray(gts, np.float64)
        s, o, n = match_image(dets if dets.size else np.zeros((0, 5)), gts if gts.size else np.zeros((0, 4)),
                              iou_threshold, min_size, ignore[i] if ignore is not None else None)
        scores.append(s)
        outcomes.append(o)
        num_gt += n
    scores, outcomes = np.concatenate(scores), np.concatenate(outcomes)
    counted = outcomes >= 0
    scores, outcomes = scores[counted], outcomes[counted]
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(outcomes[order] == 1)
    fp = np.cumsum(outcomes[order] == 0)
    recall = tp / max(num_gt, 1)
    precision = tp / np.maximum(tp + fp, 1)
    return {"recall": recall, "precision": precision, "fppi": fp / max(len(ground_truth), 1),
            "scores": scores[order], "num_gt": num_gt}


def recall_at_fppi(curve: dict, fppi: float) -> float:
    ok = curve["fppi"] <= fppi
    return float(curve["recall"][ok].max()) if ok.any() else 0.0


def score_detections(predictions: list[np.ndarray], ground_truth: list[np.ndarray], prefix: str = "detection",
                     iou_threshold: float = 0.5, ignore: list[np.ndarray] | None = None):
    """The metric dict (stable keys `PREFIX.ap50`, `PREFIX.ap50_easy`, ...) and the PR curves per subset."""
    curves = {name: pr_curve(predictions, ground_truth, iou_threshold, size, ignore) for name, size in SUBSETS.items()}
    metrics = {f"{prefix}.ap50": all_point_ap(curves["hard"]["recall"], curves["hard"]["precision"])}
    for name, c in curves.items():
        metrics[f"{prefix}.ap50_{name}"] = all_point_ap(c["recall"], c["precision"])
        metrics[f"{prefix}.faces_{name}"] = c["num_gt"]
    for f in FPPI_POINTS:
        metrics[f"{prefix}.recall_at_{f:g}fppi"] = recall_at_fppi(curves["hard"], f)
    metrics[f"{prefix}.images"] = len(ground_truth)
    return metrics, curves


def plot_pr_curves(curves: dict, path: str | Path, title: str = "face detection, IoU 0.5",
                   labels: dict | None = None) -> Path:
    """PR curves as PNG; `curves` maps a legend name to a pr_curve() dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, c in curves.items():
        ap = all_point_ap(c["recall"], c["precision"])
        ax.plot(c["recall"], c["precision"], label=f"{(labels or {}).get(name, name)} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def ground_truth_boxes(samples) -> list[np.ndarray]:
    return [s.faces.boxes.astype(np.float64) for s in samples]


def evaluate_detection(model_path: str | Path, data: str | Path, out_dir: str | Path,
                       score_threshold: float = 0.02, nms_threshold: float = 0.4, scales=(1.0,),
                       split: str = "test", max_images: int = 0, batch_size: int = 1, device: str = "cpu",
                       logger=NullLogger()) -> dict:
    """Score a detector on a labelled set (a label.txt, or a folder with SPLIT/label.txt or label.txt).

    Writes OUT/metrics.json (`detection.ap50`, `detection.ap50_{easy,medium,hard}`,
    `detection.recall_at_{0.1,1}fppi`, ...), OUT/pr_curve.png, OUT/detections.json, then the manifest.
    """
    from facepipe.data.composite import read_ignored
    from facepipe.detection.data import find_label_file, load_samples, read_image
    from facepipe.detection.infer import Detector
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_txt = find_label_file(data, split)
    samples = load_samples(label_txt)
    if max_images:
        samples = samples[:max_images]
    detector = Detector.load(model_path, device=device)
    predictions = []
    with Progress(len(samples), "detecting", unit="img") as progress:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            predictions += detector.detect_batch([read_image(s.path) for s in chunk], score_threshold,
                                                 nms_threshold, scales)
            progress.update(len(chunk))
    # Faces a set knows of but does not score (facepipe.data.composite's ignore.json), by image path.
    ignored = read_ignored(label_txt.parent)
    ignore = [ignored.get(s.path.relative_to(label_txt.parent / "images").as_posix(), np.zeros((0, 4)))
              if s.path.is_relative_to(label_txt.parent / "images") else np.zeros((0, 4)) for s in samples]
    metrics, curves = score_detections(predictions, ground_truth_boxes(samples), ignore=ignore)
    metrics["detection.model_sha256"] = detector.digest
    plot_pr_curves(curves, out_dir / "pr_curve.png")
    (out_dir / "detections.json").write_text(json.dumps(
        {str(s.path.relative_to(label_txt.parent)) if s.path.is_relative_to(label_txt.parent) else str(s.path):
         np.round(p, 2).tolist() for s, p in zip(samples, predictions)}))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    logger.log_artifact(out_dir / "pr_curve.png")
    write_manifest(out_dir, kind="detection_evaluation", extra={"data": str(label_txt), "model": str(model_path)})
    return metrics


def landmark_errors(predictions: list[np.ndarray], samples, iou_threshold: float = 0.5) -> np.ndarray:
    """Per labelled face with landmarks that a detection matches (best IoU >= threshold): the mean
    distance of the 5 predicted points to the labelled ones over the face size sqrt(w*h)."""
    errors = []
    for dets, sample in zip(predictions, samples):
        faces = sample.faces
        dets = np.asarray(dets, np.float64).reshape(-1, 15)
        if not len(dets) or not faces.has_landmarks.any():
            continue
        overlaps = box_iou(faces.boxes.astype(np.float64), dets[:, :4])
        for k in np.flatnonzero(faces.has_landmarks):
            # The highest-scoring detection that overlaps enough: what a user of the detector would take.
            ok = np.flatnonzero(overlaps[k] >= iou_threshold)
            if not len(ok):
                continue
            best = ok[int(dets[ok, 4].argmax())]
            x1, y1, x2, y2 = faces.boxes[k]
            size = np.sqrt(max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6))
            dist = np.linalg.norm(dets[best, 5:15].reshape(5, 2) - faces.landmarks[k], axis=1)
            errors.append(dist.mean() / size)
    return np.asarray(errors, np.float64)
