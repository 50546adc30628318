"""1:N identification: closed-set rank-k accuracy (CMC) and open-set DIR at a false alarm rate.

Probes whose identity is enrolled are *mated*: rank-k counts them when their identity is among
the top k gallery identities. Distractors (people not enrolled) are *non-mated*: at a threshold t
the false alarm rate (FAR, a.k.a. FPIR) is the share of them whose best score reaches t, and the
detection and identification rate DIR(t) is the share of mated probes found at rank 1 with a
score >= t. `dir_at_far_1e-2` uses the t where FAR = 1e-2 on the distractors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from facepipe.gallery.calibration import false_alarm_rate, threshold_at_far
from facepipe.run_logger import NullLogger, RunLogger

CMC_RANKS = 20
# FAR points reported as identification.dir_at_far_<key>.
DIR_FARS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3}


def identification_metrics(gallery, probe_emb: np.ndarray, probe_names: list[str],
                           nonmated_emb: np.ndarray | None = None) -> tuple[dict, dict]:
    """Metrics (stable keys, None where not computable) and the per-probe details for plots."""
    index = {name: i for i, name in enumerate(gallery.identities)}
    mated_mask = np.array([n in index for n in probe_names], bool)
    mated_emb = probe_emb[mated_mask]
    truth = np.array([index[n] for n, m in zip(probe_names, mated_mask) if m], np.int64)
    # Probes of identities that are not enrolled are non-mated too.
    extra = probe_emb[~mated_mask]
    nonmated = extra if nonmated_emb is None else np.concatenate([nonmated_emb, extra])
    ranks_k = min(CMC_RANKS, len(gallery.identities))
    scores, ids = gallery.search(mated_emb, ranks_k) if len(mated_emb) else \
        (np.zeros((0, ranks_k), np.float32), np.zeros((0, ranks_k), np.int64))
    hit = ids == truth[:, None]
    rank = np.where(hit.any(1), hit.argmax(1) + 1, 0)  # 0: not within ranks_k
    cmc = [float(np.mean((rank > 0) & (rank <= r))) for r in range(1, ranks_k + 1)] if len(rank) else []
    nonmated_top = gallery.search(nonmated, 1)[0][:, 0] if len(nonmated) else np.zeros(0, np.float32)
    mated_top1 = scores[:, 0] if len(scores) else np.zeros(0, np.float32)
    correct1 = rank == 1

    def cmc_at(r):
        return cmc[min(r, len(cmc)) - 1] if cmc else None

    metrics = {
        "identification.rank1": cmc_at(1), "identification.rank5": cmc_at(5),
        "identification.rank10": cmc_at(10),
        "identification.num_gallery": len(gallery.identities),
        "identification.num_mated": int(mated_mask.sum()),
        "identification.num_nonmated": int(len(nonmated)),
    }
    for key, far in DIR_FARS.items():
        dir_value = threshold = None
        if len(nonmated_top) and len(mated_top1):
            threshold = threshold_at_far(nonmated_top, far)
            dir_value = float(np.mean(correct1 & (mated_top1 >= threshold)))
        metrics[f"identification.dir_at_far_{key}"] = dir_value
        metrics[f"identification.threshold_at_far_{key}"] = threshold
    if getattr(gallery, "threshold", None) is not None:
        t = gallery.threshold
        metrics["identification.gallery_threshold"] = t
        metrics["identification.dir_at_gallery_threshold"] = float(np.mean(correct1 & (mated_top1 >= t))) \
            if len(mated_top1) else None
        metrics["identification.far_at_gallery_threshold"] = false_alarm_rate(nonmated_top, t) \
            if len(nonmated_top) else None
    details = {"cmc": cmc, "rank": rank, "truth": truth, "top_ids": ids[:, 0] if len(ids) else ids,
               "mated_top1": mated_top1, "correct1": correct1, "nonmated_top": nonmated_top,
               "mated_names": [n for n, m in zip(probe_names, mated_mask) if m]}
    return metrics, details


def dir_far_curve(mated_top1: np.ndarray, correct1: np.ndarray, nonmated_top: np.ndarray):
    """(far, dir) over every threshold at a non-mated score, FAR descending to 0."""
    thresholds = np.unique(np.r_[nonmated_top, np.inf])
    far = np.array([np.mean(nonmated_top >= t) for t in thresholds])
    dir_ = np.array([np.mean(correct1 & (mated_top1 >= t)) for t in thresholds])
    return far, dir_


def plot_identification(details: dict, out_dir: Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if details["cmc"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ranks = np.arange(1, len(details["cmc"]) + 1)
        ax.plot(ranks, details["cmc"], marker="o", ms=3)
        ax.set_xlabel("rank")
        ax.set_ylabel("identification rate")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"CMC {title}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "cmc.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if len(details["nonmated_top"]) and len(details["mated_top1"]):
        far, dir_ = dir_far_curve(details["mated_top1"], details["correct1"], details["nonmated_top"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        floor = 0.5 / len(details["nonmated_top"])
        ax.step(np.maximum(far, floor), dir_, where="post")
        ax.set_xscale("log")
        ax.set_xlabel("false alarm rate (non-mated searches)")
        ax.set_ylabel("DIR (rank 1, score >= threshold)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"open-set DIR vs FAR {title}".strip(), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        paths.append(out_dir / "dir_far.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def embed_tree(tree_root, recognizer, aligner, batch_size: int, desc: str):
    """Embed every image of an identity tree, no-face images center-cropped (scored, not dropped):
    `(embeddings, identity per row, file per row, record per row)`."""
    from facepipe.gallery.build import embed_identity_tree, scan_identity_tree

    tree, _ = scan_identity_tree(tree_root)
    emb, labels, records = embed_identity_tree(tree, Path(tree_root), aligner, recognizer, batch_size,
                                               no_face="center_crop", desc=desc)
    names = [tree[i][0] for i in labels]
    embedded = sorted((r for r in records if r["row"] is not None), key=lambda r: r["row"])
    return emb, names, [r["file"] for r in embedded], embedded


def evaluate_identification(model_path, gallery_dir, probe_dir, out_dir, distractor_dir=None,
                            detector_path=None, logger: RunLogger = NullLogger(),
                            batch_size: int = 64, center_crop: float | None = None) -> dict:
    """Identification metrics for probes against a gallery; writes metrics.json, probes.csv, plots.

    `gallery_dir` is either a gallery built by `facepipe build-gallery` (its recognizer must be
    `model_path`) or identity folders, enrolled here with mean templates. Probes whose identity is
    not enrolled count as distractors. Probe images without a detected face are center-cropped
    (they are scored, not dropped, so a weak detector cannot flatter the numbers).
    """
    from facepipe.gallery.align import FaceAligner
    from facepipe.gallery.build import GalleryConfig, fallback_crop, gallery_from_tree
    from facepipe.gallery.store import Gallery
    from facepipe.manifest import write_manifest
    from facepipe.recognition.embed import Recognizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    recognizer = Recognizer.load(str(model_path))
    aligner = FaceAligner(detector_path, center_crop=fallback_crop(center_crop, recognizer))
    if (Path(gallery_dir) / "gallery.json").exists():
        gallery = Gallery.load(gallery_dir, verify=True)
        gallery.check_recognizer(recognizer.digest, recognizer.embedding_size, model_path)
    else:
        cfg = GalleryConfig(batch_size=batch_size, no_face="center_crop", center_crop=center_crop)
        gallery, _ = gallery_from_tree(cfg, gallery_dir, recognizer, aligner)
    probe_emb, probe_names, probe_files, _ = embed_tree(probe_dir, recognizer, aligner, batch_size, "probes")
    distractor_emb = None
    if distractor_dir is not None:
        distractor_emb = embed_tree(distractor_dir, recognizer, aligner, batch_size, "distractors")[0]
    metrics, details = identification_metrics(gallery, probe_emb, probe_names, distractor_emb)
    metrics.update(aligner.summary("identification."))  # gallery (when enrolled here), probes, distractors
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    mated_files = [f for f, n in zip(probe_files, probe_names) if n in set(gallery.identities)]
    with open(out / "probes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "identity", "rank", "top1_identity", "top1_similarity"])
        for file, name, r, top, s in zip(mated_files, details["mated_names"], details["rank"],
                                         details["top_ids"], details["mated_top1"]):
            writer.writerow([file, name, int(r) if r else "", gallery.identities[int(top)] if top >= 0 else "",
                             f"{float(s):.4f}"])
    plots = plot_identification(details, out, Path(probe_dir).name)
    logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    for p in [out / "metrics.json", *plots]:
        logger.log_artifact(p)
    write_manifest(out, "identification", {"model_digest": recognizer.digest,
                                           "detector_digest": aligner.digest})
    return metrics
