"""The gallery artifact on disk: enrolled embeddings, names, provenance, index, threshold, manifest.

A gallery folder holds

    gallery.json              recognizer/detector digests, embedding size, template mode, dtype,
                              index kind, calibrated threshold (also copied into manifest.json)
    identities.json           enrolled identity names; row i of templates.npy belongs to
                              identities[template_identity[i]]
    templates.npy             search rows: one mean per identity, or every image (`template: all`)
    template_identity.npy
    image_embeddings.npy      one row per enrolled image (kept so identities can be added or
    image_identity.npy        removed, and the threshold recalibrated, without re-embedding)
    image_weight.npy          each image's weight in its person's mean template (`template_weighting`:
                              1, the detector score or the embedding norm); absent in galleries
                              made before weighting, which read as all weights 1
    images.json               per-image provenance: file, status, faces, box, score, landmarks used
    calibration_embeddings.npy  (when built with a calibration folder of non-enrolled people)
    index.faiss               FAISS index over templates.npy (IndexFlatIP, IVF or HNSW)
    build_report.json, calibration.json, calibration.png
    manifest.json             sha256 of every file, written last

`Gallery.load(dir)` verifies every checksum and refuses a gallery that fails it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facepipe.errors import DataError
from facepipe.gallery.calibration import calibrate, mean_templates
from facepipe.gallery.search import SearchIndex
from facepipe.manifest import check_replaceable as manifest_check_replaceable
from facepipe.manifest import read_manifest, replacing, write_manifest

FORMAT_VERSION = 1
GALLERY_KIND = "gallery"


def _np_load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("gallery file missing", path=path) from None
    except (ValueError, OSError) as exc:
        raise DataError(f"not a readable .npy array: {exc}", path=path) from None


def _json_load(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("gallery file missing", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from None


WEIGHTINGS = ("none", "detector_score", "embedding_norm")


def row_weights(records: list[dict], rows: int, weighting: str) -> np.ndarray:
    """Template weight of each embedding row from its image record (`row`, `score`, `embedding_norm`).

    `none`: 1 each; `detector_score`: the main face's detector confidence (1 without a detector
    or for a center-cropped no-face image); `embedding_norm`: the recognizer's feature norm before
    normalising, which is larger for clear, frontal, well-lit faces.
    """
    if weighting not in WEIGHTINGS:
        raise DataError(f"template_weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    weights = np.ones(rows, np.float32)
    if weighting == "none":
        return weights
    key = "score" if weighting == "detector_score" else "embedding_norm"
    for record in records:
        row, value = record.get("row"), record.get(key)
        if row is not None and value is not None and 0 <= row < rows:
            weights[row] = max(float(value), 1e-6)
    return weights


@dataclass
class Gallery:
    meta: dict
    identities: list[str]
    image_embeddings: np.ndarray
    image_identity: np.ndarray
    images: list[dict]
    calibration_embeddings: np.ndarray | None = None
    image_weight: np.ndarray | None = None  # None: every image weighs 1
    index: SearchIndex | None = None
    template_identity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    report: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    # Mated / non-mated scores of the last calibration, for calibration.png (not stored).
    calibration_scores: dict | None = field(default=None, repr=False)

    # ---- derived rows -------------------------------------------------------------------
    @property
    def template_mode(self) -> str:
        return self.meta["template"]

    @property
    def embedding_size(self) -> int:
        return int(self.meta["embedding_size"])

    @property
    def threshold(self) -> float | None:
        return self.meta.get("threshold")

    def weights(self) -> np.ndarray:
        if self.image_weight is None:
            return np.ones(len(self.image_embeddings), np.float32)
        return np.asarray(self.image_weight, np.float32)

    def templates(self) -> tuple[np.ndarray, np.ndarray]:
        """Search rows and their identity index, from the per-image embeddings."""
        if self.template_mode == "mean":
            emb = mean_templates(self.image_embeddings, self.image_identity, len(self.identities),
                                 self.weights())
            return emb, np.arange(len(self.identities), dtype=np.int32)
        return self.image_embeddings.astype(np.float32), self.image_identity.astype(np.int32)

    def reindex(self, previous: SearchIndex | None = None) -> None:
        """Recompute templates, the search index and the threshold after a change."""
        rows, row_identity = self.templates()
        rows = rows.astype(self.meta["dtype"]).astype(np.float32)
        m = self.meta
        if previous is not None and previous.kind == m["index"]:
            self.index = previous.rebuilt(rows)
        else:
            self.index = SearchIndex.build(rows, m["index"], nlist=m.get("ivf_nlist", 0),
                                           nprobe=m.get("ivf_nprobe", 16), hnsw_m=m.get("hnsw_m", 32),
                                           ef_search=m.get("hnsw_ef_search", 64))
        self.template_identity = row_identity
        self.recalibrate()
        m["num_identities"] = len(self.identities)
        m["num_rows"] = int(len(rows))
        m["num_images"] = int(len(self.image_embeddings))

    def recalibrate(self) -> dict:
        m = self.meta
        result = calibrate(self.image_embeddings.astype(np.float32), self.image_identity,
                           len(self.identities), m["template"], m["target_far"],
                           gallery_rows=self.index.embeddings if self.index is not None else None,
                           calibration_embeddings=self.calibration_embeddings, weights=self.weights())
        self.calibration_scores = result.pop("scores", None)
        self.calibration = result
        m["threshold"] = result["threshold"]
        return result

    # ---- checks -------------------------------------------------------------------------
    def check_recognizer(self, digest: str, embedding_size: int, recognizer_path=None) -> None:
        """Refuse to match embeddings from another recognizer than the one that built the gallery."""
        if int(embedding_size) != self.embedding_size:
            raise DataError(
                f"gallery embeddings are {self.embedding_size}-d (recognizer {self.meta['recognizer_digest']}) "
                f"but the recognizer gives {embedding_size}-d (recognizer {digest}): rebuild the gallery "
                "with this recognizer", path=recognizer_path)
        if digest != self.meta["recognizer_digest"]:
            raise DataError(
                f"the gallery was built with recognizer {self.meta['recognizer_digest']} but this "
                f"recognizer is {digest}: embeddings of different models are not comparable; rebuild "
                "the gallery with this recognizer", path=recognizer_path)

    # ---- search -------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k IDENTITIES per query: `(scores (Q,k), identity indices (Q,k))`, -1 where fewer.

        With one row per image (`template: all`) an identity's score is its best image's score.
        """
        q = np.asarray(queries, np.float32).reshape(-1, self.embedding_size)
        k = max(1, int(k))
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        if self.index is None or self.index.size == 0 or len(q) == 0:
            return out_s, out_i
        if self.template_mode == "mean":
            s, rows = self.index.search(q, k)
            ids = np.where(rows >= 0, self.template_identity[np.clip(rows, 0, None)], -1)
            out_s[:, :s.shape[1]], out_i[:, :s.shape[1]] = s, ids
            return out_s, out_i
        per_identity = int(np.bincount(self.template_identity).max())
        s, rows = self.index.search(q, min(self.index.size, k * per_identity))
        for qi in range(len(q)):
            seen: list[int] = []
            for score, row in zip(s[qi], rows[qi]):
                if row < 0:
                    continue
                ident = int(self.template_identity[row])
                if ident not in seen:
                    out_s[qi, len(seen)], out_i[qi, len(seen)] = score, ident
                    seen.append(ident)
                    if len(seen) == k:
                        break
        return out_s, out_i

    # ---- editing ------------------------------------------------------------------------
    def remove(self, names: list[str]) -> list[str]:
        """Drop identities by name; returns the names that were not enrolled."""
        missing = [n for n in names if n not in self.identities]
        drop = {self.identities.index(n) for n in names if n in self.identities}
        if not drop:
            return missing
        keep_ids = [i for i in range(len(self.identities)) if i not in drop]
        remap = np.full(len(self.identities), -1, np.int64)
        remap[keep_ids] = np.arange(len(keep_ids))
        keep_rows = ~np.isin(self.image_identity, list(drop))
        self.image_weight = self.weights()[keep_rows]
        self.image_embeddings = self.image_embeddings[keep_rows]
        self.image_identity = remap[self.image_identity[keep_rows]].astype(np.int32)
        dropped_names = {self.identities[i] for i in drop}
        self.identities = [self.identities[i] for i in keep_ids]
        self.images = [r for r in self.images if r["identity"] not in dropped_names]
        self.reindex(self.index)
        return missing

    def add(self, names: list[str], embeddings: np.ndarray, labels: np.ndarray, images: list[dict],
            replace: bool = False, weights: np.ndarray | None = None) -> None:
        """Enrol new identities (labels index into `names`); an existing name needs `replace`.

        `weights`: the new images' template weights (default: from `images` by this gallery's
        `template_weighting`)."""
        clash = [n for n in names if n in self.identities]
        if clash and not replace:
            raise DataError(f"identities already enrolled: {clash[:10]}; use --replace to re-enrol them")
        if clash:
            self.remove(clash)
        if weights is None:
            weights = row_weights(images, len(embeddings), self.meta.get("template_weighting", "none"))
        base = len(self.identities)
        self.identities = self.identities + list(names)
        self.image_weight = np.concatenate([self.weights(), np.asarray(weights, np.float32)])
        emb = np.asarray(embeddings, np.float32).astype(self.meta["dtype"])
        self.image_embeddings = np.concatenate([self.image_embeddings, emb]) if len(emb) else self.image_embeddings
        self.image_identity = np.concatenate(
            [self.image_identity, np.asarray(labels, np.int32) + base]).astype(np.int32)
        self.images = self.images + list(images)
        self.reindex(self.index)

    # ---- persistence --------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra_report: dict | None = None) -> Path:
        """Write every file, then manifest.json last (an interrupted save leaves no manifest)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
        dtype = self.meta["dtype"]
        rows, _ = self.templates()
        np.save(out / "templates.npy", rows.astype(dtype))
        np.save(out / "template_identity.npy", self.template_identity.astype(np.int32))
        np.save(out / "image_embeddings.npy", self.image_embeddings.astype(dtype))
        np.save(out / "image_identity.npy", self.image_identity.astype(np.int32))
        np.save(out / "image_weight.npy", self.weights())
        if self.calibration_embeddings is not None:
            np.save(out / "calibration_embeddings.npy", self.calibration_embeddings.astype(dtype))
        (out / "identities.json").write_text(json.dumps(self.identities, indent=1, ensure_ascii=False))
        (out / "images.json").write_text(json.dumps(self.images, indent=1, ensure_ascii=False))
        self.index.save(out / "index.faiss")
        if extra_report is not None:
            self.report = extra_report
        (out / "build_report.json").write_text(json.dumps(self.report, indent=2, ensure_ascii=False))
        (out / "calibration.json").write_text(json.dumps(self.calibration, indent=2))
        self._plot_calibration(out / "calibration.png")
        (out / "gallery.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        m = self.meta
        write_manifest(out, GALLERY_KIND, extra={
            "recognizer_digest": m["recognizer_digest"], "detector_digest": m.get("detector_digest"),
            "embedding_size": m["embedding_size"], "threshold": m.get("threshold"),
            "target_far": m["target_far"], "calibration_split": self.calibration.get("split"),
            "num_identities": len(self.identities)})
        return out

    def _plot_calibration(self, path: Path) -> None:
        scores = self.calibration_scores
        if not scores:
            path.unlink(missing_ok=True)
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.linspace(-1, 1, 81)
        if scores["mated"].size:
            ax.hist(scores["mated"], bins=bins, alpha=0.6, density=True, label="mated (own identity, image left out)")
        ax.hist(scores["nonmated"], bins=bins, alpha=0.6, density=True, label="non-mated (best other identity)")
        if self.meta.get("threshold") is not None:
            ax.axvline(self.meta["threshold"], color="k", ls="--",
                       label=f"threshold {self.meta['threshold']:.3f} (FAR {self.meta['target_far']:g})")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        ax.set_title(f"gallery calibration ({self.calibration.get('split')})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    @classmethod
    def load(cls, gallery_dir: str | Path, verify: bool = True) -> "Gallery":
        """Read a gallery folder; with `verify`, every file must match its manifest checksum."""
        g = Path(gallery_dir)
        if not g.is_dir():
            raise DataError("gallery folder not found", path=g)
        manifest = read_manifest(g, verify=verify)
        if manifest.get("kind") != GALLERY_KIND:
            raise DataError(f"not a gallery (manifest kind {manifest.get('kind')!r}, expected "
                            f"{GALLERY_KIND!r})", path=g / "manifest.json")
        meta = _json_load(g / "gallery.json")
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"gallery format {meta.get('format')!r} is not supported (expected "
                            f"{FORMAT_VERSION})", path=g / "gallery.json")
        identities = _json_load(g / "identities.json")
        image_embeddings = _np_load(g / "image_embeddings.npy")
        image_identity = _np_load(g / "image_identity.npy")
        template_identity = _np_load(g / "template_identity.npy")
        rows = _np_load(g / "templates.npy")
        calib = g / "calibration_embeddings.npy"
        weight_file = g / "image_weight.npy"
        image_weight = _np_load(weight_file) if weight_file.exists() else None
        if image_weight is not None and image_weight.shape != (len(image_embeddings),):
            raise DataError(f"image weights {image_weight.shape} do not match {len(image_embeddings)} "
                            "image embeddings", path=weight_file)
        if image_embeddings.ndim != 2 or image_embeddings.shape[1] != meta["embedding_size"] \
                or len(image_identity) != len(image_embeddings):
            raise DataError(f"image embeddings {image_embeddings.shape} do not match "
                            f"{len(image_identity)} labels of size {meta['embedding_size']}",
                            path=g / "image_embeddings.npy")
        index = SearchIndex.load(g / "index.faiss", rows, meta["index"], nprobe=meta.get("ivf_nprobe", 16),
                                 ef_search=meta.get("hnsw_ef_search", 64))
        gallery = cls(meta=meta, identities=identities, image_embeddings=image_embeddings,
                      image_identity=image_identity, images=_json_load(g / "images.json"),
                      calibration_embeddings=_np_load(calib) if calib.exists() else None,
                      image_weight=image_weight,
                      index=index, template_identity=template_identity,
                      report=_json_load(g / "build_report.json"),
                      calibration=_json_load(g / "calibration.json"))
        return gallery


def check_replaceable(final_dir: Path) -> None:
    """Only an earlier gallery (or nothing) may be replaced: never a user's unrelated folder."""
    manifest_check_replaceable(final_dir, GALLERY_KIND, marker="gallery.json")


def save_replacing(gallery: Gallery, final_dir: Path, extra_report: dict | None = None) -> None:
    """Write the gallery beside `final_dir`, then swap it in: the old one stays intact until then."""
    with replacing(final_dir, GALLERY_KIND, marker="gallery.json") as tmp:
        gallery.save(tmp, extra_report=extra_report)


def gallery_info(gallery_dir) -> dict:
    g = Gallery.load(gallery_dir, verify=True)
    m = g.meta
    return {"identities": len(g.identities), "rows": g.index.size, "images": int(len(g.image_embeddings)),
            "embedding_size": m["embedding_size"], "template": m["template"],
            "template_weighting": m.get("template_weighting", "none"), "dtype": m["dtype"],
            "index": m["index"], "threshold": m.get("threshold"), "target_far": m["target_far"],
            "calibration_split": g.calibration.get("split"), "recognizer_digest": m["recognizer_digest"],
            "detector_digest": m.get("detector_digest"), "alignment": m.get("alignment"),
            "created": m.get("created"), "modified": m.get("modified"),
            "problems": {k: len(g.report.get(k) or []) for k in ("no_face", "several_faces", "unreadable",
                                                                 "empty_identity_folders",
                                                                 "duplicate_identity_names")},
            "names": g.identities}
