"""Open-set thresholds: the similarity above which a face is named rather than called `unknown`.

FAR here is the open-set false alarm rate (FPIR): the fraction of searches by people who are
NOT enrolled whose best gallery score reaches the threshold. The calibration split is either a
folder of non-enrolled identities or, by default, the enrolled images themselves searched with
their own identity left out (leave-identity-out), which needs no extra data.
"""

from __future__ import annotations

import numpy as np

# Rows of probes scored at once: 4096 probes x 100k templates x 4 bytes = 1.6 GB worst case.
_PROBE_BLOCK = 1024


def threshold_at_far(nonmated_top_scores: np.ndarray, target_far: float) -> float:
    """The smallest threshold with at most `target_far` of the non-mated top scores >= it.

    With n non-mated searches, FARs below 1/n cannot be resolved: the threshold is then just
    above the highest non-mated score (FAR 0 on this split).
    """
    scores = np.sort(np.asarray(nonmated_top_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no non-mated scores to calibrate on")
    allowed = int(np.floor(target_far * scores.size + 1e-9))
    if allowed >= scores.size:
        return float(scores[-1])
    # Accept when score >= threshold: put the threshold just above the (allowed+1)-th highest.
    return float(np.nextafter(np.float32(scores[allowed]), np.float32(np.inf)))


def false_alarm_rate(nonmated_top_scores: np.ndarray, threshold: float) -> float:
    s = np.asarray(nonmated_top_scores)
    return float(np.mean(s >= threshold)) if s.size else float("nan")


def mean_templates(embeddings: np.ndarray, labels: np.ndarray, num_identities: int,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """Per-identity (weighted) mean of L2-normalised embeddings, renormalised (zero rows stay zero).

    `weights` (one per embedding, >= 0): a better photo counts more in its person's template.
    """
    d = embeddings.shape[1]
    emb = embeddings.astype(np.float64)
    if weights is not None:
        emb = emb * np.asarray(weights, np.float64)[:, None]
    sums = np.zeros((num_identities, d), np.float64)
    np.add.at(sums, labels, emb)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def leave_identity_out_scores(embeddings: np.ndarray, labels: np.ndarray, num_identities: int,
                              template: str = "mean", weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Search every enrolled image against the gallery as if it were a probe.

    `nonmated`: its best score among OTHER identities (one per image).
    `mated`: its score against its own identity with the image itself left out (the weighted
    mean of the rest, or best of the rest for `all`); NaN for identities with a single image.
    """
    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(emb)
    w = np.ones(n, np.float64) if weights is None else np.asarray(weights, np.float64)
    nonmated = np.full(n, -np.inf, np.float32)
    mated = np.full(n, np.nan, np.float32)
    counts = np.bincount(labels, minlength=num_identities)
    if template == "mean":
        sums = np.zeros((num_identities, emb.shape[1]), np.float64)
        np.add.at(sums, labels, emb.astype(np.float64) * w[:, None])
        templates = mean_templates(emb, labels, num_identities, w)
        for start in range(0, n, _PROBE_BLOCK):
            e, lab = emb[start:start + _PROBE_BLOCK], labels[start:start + _PROBE_BLOCK]
            scores = e @ templates.T
            scores[np.arange(len(e)), lab] = -np.inf
            nonmated[start:start + len(e)] = scores.max(axis=1) if num_identities > 1 else -np.inf
            rest = sums[lab] - e * w[start:start + _PROBE_BLOCK, None]
            norm = np.linalg.norm(rest, axis=1)
            ok = counts[lab] > 1
            mated[start:start + len(e)][ok] = ((rest[ok] * e[ok]).sum(1) / np.maximum(norm[ok], 1e-12))
    else:
        for start in range(0, n, _PROBE_BLOCK):
            e, lab = emb[start:start + _PROBE_BLOCK], labels[start:start + _PROBE_BLOCK]
            scores = e @ emb.T
            same = lab[:, None] == labels[None, :]
            other = np.where(same, -np.inf, scores)
            nonmated[start:start + len(e)] = other.max(axis=1)
            own = np.where(same, scores, -np.inf)
            own[np.arange(len(e)), np.arange(start, start + len(e))] = -np.inf
            best_own = own.max(axis=1)
            mated[start:start + len(e)] = np.where(np.isfinite(best_own), best_own, np.nan)
    return {"nonmated": nonmated, "mated": mated}


def calibrate(embeddings: np.ndarray, labels: np.ndarray, num_identities: int, template: str,
              target_far: float, gallery_rows: np.ndarray | None = None,
              calibration_embeddings: np.ndarray | None = None, weights: np.ndarray | None = None) -> dict:
    """Threshold for `target_far`, with the split it came from and what it achieves there.

    With `calibration_embeddings` (non-enrolled people) those are searched against
    `gallery_rows`; otherwise leave-identity-out over the enrolled images.
    """
    loo = leave_identity_out_scores(embeddings, labels, num_identities, template, weights)
    if calibration_embeddings is not None and len(calibration_embeddings) and gallery_rows is not None \
            and len(gallery_rows):
        from facepipe.gallery.search import top_k_exact

        nonmated = top_k_exact(calibration_embeddings, gallery_rows, 1)[0][:, 0]
        split = "calibration_dir"
    else:
        nonmated = loo["nonmated"][np.isfinite(loo["nonmated"])]
        split = "leave_identity_out"
    if nonmated.size == 0:
        return {"threshold": None, "split": split, "num_nonmated": 0, "target_far": target_far,
                "note": "no non-mated searches (a single identity and no calibration_dir)"}
    threshold = threshold_at_far(nonmated, target_far)
    mated = loo["mated"][np.isfinite(loo["mated"])]
    result = {
        "threshold": threshold, "split": split, "target_far": target_far,
        "far": false_alarm_rate(nonmated, threshold), "num_nonmated": int(nonmated.size),
        "num_mated": int(mated.size),
        "true_accept_rate": float(np.mean(mated >= threshold)) if mated.size else None,
        "resolvable": bool(nonmated.size * target_far >= 1.0),
    }
    if not result["resolvable"]:
        result["note"] = (f"only {nonmated.size} non-mated searches: FAR {target_far:g} needs at least "
                          f"{int(np.ceil(1 / target_far))}; the threshold sits just above the highest "
                          "non-mated score")
    result["scores"] = {"nonmated": nonmated, "mated": mated}
    return result
