"""Face verification by the LFW protocol: 10-fold accuracy (threshold picked on 9 folds, measured
on the 10th), ROC AUC, TAR at FAR 1e-2 / 1e-3, with ROC and DET plots.

Scores are cosine similarities of flip-summed, L2-normalised embeddings. TAR at a FAR is the
largest true-accept rate of any threshold whose false-accept rate does not exceed it; with few
impostor pairs (600 in LFW) FAR 1e-3 means "no impostor accepted".

Metric math and plots only (numpy, matplotlib): the training engine imports it, so a model
loader here would make a cycle; scoring a model.pt on a pairs file is `verification_step`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facepipe.errors import DataError

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
