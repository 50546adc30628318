"""Face verification by the LFW protocol: 10-fold accuracy (threshold picked on 9 folds, measured
on the 10th), ROC AUC, TAR at FAR 1e-2 / 1e-3, with ROC and DET plots.

Scores are cosine similarities of flip-summed, L2-normalised embeddings. TAR at a FAR is the
largest true-accept rate of any threshold whose false-accept rate does not exceed it; with few
impostor pairs (600 in LFW) FAR 1e-3 means "no impostor accepted".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facepipe.errors import DataError
from facepipe.run_logger import NullLogger

FARS = {"tar_at_far_1e-2": 1e-2, "tar_at_far_1e-3": 1e-3}


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) for "accept when score >= threshold", thresholds descending."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(bool)
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tar = np.r_[0.0, tp / n_pos]
    far = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, s[distinct]]
    return far, tar, thresholds


def auc(far: np.ndarray, tar: np.ndarray) -> float:
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def tar_at_far(far: np.ndarray, tar: np.ndarray, target: float) -> float:
    ok = far <= target + 1e-12
    return float(tar[ok].max()) if ok.any() else 0.0


def _best_threshold(scores, same) -> float:
    """The threshold maximising accuracy: midpoints between sorted distinct scores."""
    s = np.unique(scores)
    candidates = np.r_[s[0] - 1e-6, (s[1:] + s[:-1]) / 2.0, s[-1] + 1e-6]
    # accepted same pairs + rejected different pairs, for every candidate at once
    order = np.sort(scores[same])
    accepted_same = len(order) - np.searchsorted(order, candidates, side="left")
    rejected_diff = np.searchsorted(np.sort(scores[~same]), candidates, side="left")
    return float(candidates[int(np.argmax(accepted_same + rejected_diff))])


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float, list]:
    """(mean accuracy, std, per-fold thresholds) by the LFW protocol."""
    same = same.astype(bool)
    accs, thresholds = [], []
    for k in np.unique(folds):
        test = folds == k
        if test.all():  # a single fold: no held-out threshold possible, use the fold itself
            t = _best_threshold(scores, same)
        else:
            t = _best_threshold(scores[~test], same[~test])
        thresholds.append(t)
        accs.append(float(np.mean((scores[test] >= t) == same[test])))
    return float(np.mean(accs)), float(np.std(accs)), thresholds


def verification_metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """accuracy, accuracy_std, auc, tar_at_far_1e-2, tar_at_far_1e-3 (plain floats)."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if len(scores) == 0 or same.all() or not same.any():
        raise DataError(f"verification needs both same and different pairs; got {int(same.sum())} same "
                        f"of {len(same)}")
    mean, std, thresholds = ten_fold_accuracy(scores, same, np.asarray(folds))
    far, tar, _ = roc_curve(scores, same)
    out = {"accuracy": mean, "accuracy_std": std, "auc": auc(far, tar)}
    out.update({key: tar_at_far(far, tar, v) for key, v in FARS.items()})
    out["threshold"] = float(np.mean(thresholds))
    return out


def plot_roc_det(scores: np.ndarray, same: np.ndarray, out_dir: str | Path, title: str = "") -> list[Path]:
    """roc.png (TAR vs FAR, log FAR) and det.png (FNMR vs FMR, log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far, tar, _ = roc_curve(np.asarray(scores, np.float64), np.asarray(same, bool))
    out_dir = Path(out_dir)
    # log axes cannot show 0: draw zero rates at half the smallest measurable rate
    floor = 0.5 / max(int((~np.asarray(same, bool)).sum()), 1)
    curves = [("roc.png", tar, False, "true accept rate (TAR)", f"ROC {title} (AUC {auc(far, tar):.4f})"),
              ("det.png", np.maximum(1.0 - tar, floor), True, "false non-match rate (FNMR)", f"DET {title}")]
    paths = []
    for name, y, log_y, ylabel, heading in curves:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(np.maximum(far, floor), y)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("false accept rate (FAR = FMR)")
        ax.set_ylabel(ylabel)
        ax.set_title(heading)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def face_preparer(recognizer, detector_path=None, center_crop: float | None = None):
    """image_bgr -> face at the recognizer's input size: detector alignment, else a center crop."""
    size = recognizer.input_size
    if detector_path is not None:
        from facepipe.gallery.align import FaceAligner

        aligner = FaceAligner(detector_path)
        # align() returns (aligned_face, info); only the face is embedded.
        return lambda image: aligner.align(image, size)[0]
    from facepipe.data.crop import center_crop_resize

    crop = recognizer.center_crop if center_crop is None else center_crop
    return lambda image: center_crop_resize(image, size, crop)


def evaluate_verification(model_path, pairs_path, images_dir, out_dir, detector_path=None,
                          center_crop: float | None = None, logger=NullLogger()) -> dict:
    """Score every pair with the recognizer at `model_path`; write metrics.json, scores.csv,
    roc.png, det.png and manifest.json to `out_dir`; return the metrics."""
    from facepipe.evaluation.pairs import load_verification_set
    from facepipe.manifest import write_manifest
    from facepipe.recognition.embed import Recognizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recognizer = Recognizer.load(model_path)
    target = load_verification_set(pairs_path, images_dir, face_preparer(recognizer, detector_path, center_crop))
    emb = recognizer.embed(target.faces)
    scores = np.sum(emb[target.left] * emb[target.right], axis=1)
    found = verification_metrics(scores, target.same, target.folds)
    metrics = {f"verification.{k}": v for k, v in found.items()}
    metrics["verification.pairs"] = int(len(scores))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    with open(out_dir / "scores.csv", "w") as f:
        for s, y in zip(scores, target.same):
            f.write(f"{s:.6f},{int(y)}\n")
    plots = plot_roc_det(scores, target.same, out_dir, Path(pairs_path).name)
    logger.log_metrics({k: v for k, v in metrics.items()})
    for p in [out_dir / "metrics.json", out_dir / "scores.csv", *plots]:
        logger.log_artifact(p)
    write_manifest(out_dir, "verification", {"model_digest": recognizer.digest,
                                             "pairs": str(pairs_path)})
    return metrics

