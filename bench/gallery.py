"""Gallery search and identification benchmark.

Part 1 (exact): galleries of N random 512-d unit vectors (N = 10k, 100k, 1M): queries/s at batch 1
and 256 and batch-1 latency for facepipe's exact search, NumPy brute force (matmul + argpartition)
and FAISS IndexFlatIP, as ratios against FAISS flat measured in the same run.
Part 2 (approximate): clustered, face-like embeddings (identities x samples around a centre, queries
are new samples of enrolled identities): IVF and HNSW queries/s against exact search, recall@1
(row level: the approximate first answer is the exact first answer), build time and memory.
Part 3 (real photos, with --recognizer): lfw-dev identities I..K: the first image of each person
with 2+ images enrolled, their other images are probes, people with one image are distractors;
rank-1 and DIR at FAR 1e-2 (facepipe evaluate identification).
Part 4 (open set, with --recognizer, and --detector for the aligned rows): people with more than
--enrol photos enrolled from one photo vs --enrol photos (plain and quality-weighted means) on the
same probes; the threshold calibrated for --target-far on held-apart strangers and the FAR it gives
on other strangers; pairs-dev verification; all of it with center crops and with faces aligned on
the detector's landmarks (the effect of alignment alone), and how often landmarks land in the box.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python bench/gallery.py --sizes 10000,100000,1000000 \
        --approx-sizes 100000,1000000 --recognizer /tmp/lfw/model.pt --out /tmp/bench_gallery
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512
K = 5


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_gallery(n: int, rng) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):  # in chunks: no float64 temporaries of 4 GB
        out[s:s + 100_000] = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
    return unit(out)


def face_like(n: int, per_identity: int, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows: n/per_identity identity centres, each with noisy samples (same-person cos ~0.7)."""
    ids = n // per_identity
    centres = random_gallery(ids, rng)
    out = np.empty((ids * per_identity, DIM), np.float32)
    for s in range(0, ids, 20_000):
        c = centres[s:s + 20_000]
        block = np.repeat(c, per_identity, 0)
        block += (noise / np.sqrt(DIM)) * rng.standard_normal(block.shape, dtype=np.float32)
        out[s * per_identity:(s + len(c)) * per_identity] = unit(block)
    return out, centres


def timed_interleaved(methods: dict, queries: np.ndarray, batch: int, budget_s: float = 4.0,
                      max_rounds: int = 40) -> dict:
    """{name: (queries/s, latencies ms)}; methods take turns batch by batch, so load from other
    processes and FAISS's spinning OpenMP threads weigh on each of them alike."""
    for fn in methods.values():
        fn(queries[:batch])  # warm-up (thread pools, page faults)
    lat: dict = {name: [] for name in methods}
    t_end = time.perf_counter() + budget_s
    i = 0
    while (time.perf_counter() < t_end or i < 3) and i < max_rounds:
        q = queries[(i * batch) % (len(queries) - batch + 1):][:batch]
        for name, fn in methods.items():
            t = time.perf_counter()
            fn(q)
            lat[name].append((time.perf_counter() - t) * 1000)
        i += 1
    # Median batch time: robust to the other engineers' jobs stealing a core now and then.
    return {name: (batch / (statistics.median(v) / 1000), v) for name, v in lat.items()}


def numpy_brute(gallery):
    def search(q):
        s = q @ gallery.T
        idx = np.argpartition(s, -K, axis=1)[:, -K:]
        part = np.take_along_axis(s, idx, 1)
        order = np.argsort(-part, axis=1)
        return np.take_along_axis(part, order, 1), np.take_along_axis(idx, order, 1)
    return search


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_exact(sizes: list[int], rng, report: dict) -> None:
    import faiss

    from facepipe.gallery.search import SearchIndex

    print(f"\n== exact search, random {DIM}-d unit vectors, top-{K}; ratios vs FAISS IndexFlatIP ==")
    print(f"{'N':>9} {'batch':>5} {'method':>10} {'q/s':>9} {'p50 ms':>8} {'vs faiss':>8}")
    for n in sizes:
        gallery = random_gallery(n, rng)
        queries = unit(gallery[rng.integers(0, n, 2048)] + 0.05 * rng.standard_normal((2048, DIM), dtype=np.float32))
        before = rss_mb()
        flat = faiss.IndexFlatIP(DIM)
        flat.add(gallery)
        faiss_mb = rss_mb() - before
        ours = SearchIndex("flat", gallery)
        methods = {"facepipe": lambda q: ours.search(q, K), "numpy": numpy_brute(gallery),
                   "faiss": lambda q: flat.search(q, K)}
        # Same answers first: the benchmark compares equals.
        a, b = ours.search(queries[:64], K)[1], flat.search(queries[:64], K)[1]
        agree = float((a[:, 0] == b[:, 0]).mean())
        row = {"gallery_mb": gallery.nbytes / 2**20, "faiss_flat_extra_mb": round(faiss_mb, 1),
               "top1_agreement_with_faiss": agree}
        for batch in (1, 256):
            results = timed_interleaved(methods, queries, batch, budget_s=6.0 if n < 10**6 else 20.0)
            ref = results["faiss"][0]
            for name, (qps, lat) in results.items():
                p50 = statistics.median(lat)
                print(f"{n:>9} {batch:>5} {name:>10} {qps:>9.1f} {p50:>8.2f} {qps / ref:>8.2f}x")
                row[f"{name}.batch{batch}.qps"] = round(qps, 1)
                row[f"{name}.batch{batch}.p50_ms"] = round(p50, 3)
                row[f"{name}.batch{batch}.vs_faiss"] = round(qps / ref, 3)
        print(f"{n:>9} memory: gallery {row['gallery_mb']:.0f} MB (float32; float16 storage halves it), "
              f"FAISS flat keeps its own copy (+{faiss_mb:.0f} MB RSS); top-1 agreement {agree:.3f}")
        report["exact"][str(n)] = row
        del flat, ours, gallery


def bench_approx(sizes: list[int], rng, report: dict, per_identity: int, noise: float, hnsw_max: int,
                 nprobes: list[int]) -> None:
    import faiss

    from facepipe.gallery.search import SearchIndex, default_nlist, recall_at_1, top_k_exact

    print(f"\n== approximate search on face-like clusters ({per_identity} samples per identity, "
          f"noise {noise}), top-{K}; speed-up vs exact at the same batch ==")
    print(f"{'N':>9} {'index':>18} {'build s':>8} {'MB':>7} {'recall@1':>8} {'id rec@1':>8} {'q/s b1':>8} {'x exact':>7} "
          f"{'q/s b256':>8} {'x exact':>7}")
    for n in sizes:
        gallery, centres = face_like(n, per_identity, noise, rng)
        pick = rng.integers(0, len(centres), 2048)
        queries = unit(centres[pick] + (noise / np.sqrt(DIM)) * rng.standard_normal((2048, DIM), dtype=np.float32))
        exact_ids = top_k_exact(queries, gallery, 1)[1]
        exact = {b: timed_interleaved({"exact": lambda q: top_k_exact(q, gallery, K)}, queries, b,
                                      3.0 if n < 10**6 else 8.0)["exact"][0] for b in (1, 256)}
        print(f"{n:>9} {'exact (facepipe)':>18} {'-':>8} {gallery.nbytes / 2**20:>7.0f} {1.0:>8.3f} {1.0:>8.3f} "
              f"{exact[1]:>8.1f} {1.0:>7.1f} {exact[256]:>8.1f} {1.0:>7.1f}")
        row = {"exact.batch1.qps": exact[1], "exact.batch256.qps": exact[256]}
        # Lists capped at 1024: k-means over 4 sqrt(N) lists at 1M rows takes many minutes on 2 cores.
        configs = [("ivf", {"nlist": min(default_nlist(n), 1024), "nprobe": p}) for p in nprobes]
        if n <= hnsw_max:
            configs += [("hnsw", {"hnsw_m": 32, "ef_construction": 80, "ef_search": e}) for e in (32, 128)]
        built: dict = {}
        for kind, params in configs:
            build_key = (kind, params.get("nlist"), params.get("hnsw_m"))
            t = time.perf_counter()
            if build_key not in built:
                before = rss_mb()
                if kind == "ivf":  # lists trained on a sample (as FAISS advises: ~64 rows per list), then all rows added
                    sample = gallery[np.sort(rng.choice(n, min(n, 64 * params["nlist"]), replace=False))]
                    index = SearchIndex.build(sample, kind, **params).rebuilt(gallery)
                else:
                    index = SearchIndex.build(gallery, kind, **params)
                built[build_key] = (index, time.perf_counter() - t, rss_mb() - before)
            index, build_s, mem = built[build_key]
            index.nprobe, index.ef_search = params.get("nprobe", 16), params.get("ef_search", 64)
            index._apply_search_params()
            approx_ids = index.search(queries, 1)[1]
            recall = recall_at_1(approx_ids, exact_ids)
            # Same person found, if not the same image: what a face search needs.
            id_recall = float(np.mean(approx_ids[:, 0] // per_identity == exact_ids[:, 0] // per_identity))
            speed = {b: timed_interleaved({"a": lambda q: index.search(q, K)}, queries, b, 3.0)["a"][0]
                     for b in (1, 256)}
            label = f"{kind} " + ",".join(f"{k}={v}" for k, v in params.items() if k in ("nprobe", "ef_search"))
            print(f"{n:>9} {label:>18} {build_s:>8.1f} {mem:>7.0f} {recall:>8.3f} {id_recall:>8.3f} {speed[1]:>8.1f} "
                  f"{speed[1] / exact[1]:>7.1f} {speed[256]:>8.1f} {speed[256] / exact[256]:>7.1f}")
            row[label] = {"build_s": round(build_s, 2), "extra_mb": round(mem, 1), "recall_at_1": recall,
                          "identity_recall_at_1": id_recall,
                          "batch1.qps": round(speed[1], 1), "batch1.speedup": round(speed[1] / exact[1], 2),
                          "batch256.qps": round(speed[256], 1),
                          "batch256.speedup": round(speed[256] / exact[256], 2)}
        report["approximate"][str(n)] = row
        del built, gallery
    _ = faiss


def bench_lfw(lfw: Path, recognizer: Path, out: Path, detector: str | None, report: dict) -> None:
    from facepipe.evaluation.identification import evaluate_identification

    images = lfw / "images"
    people = sorted(p for p in images.iterdir() if p.is_dir() and p.name[:1].upper() in "IJK")
    trees = {name: out / "lfw_trees" / name for name in ("gallery", "probes", "distractors")}
    if not (out / "lfw_trees").exists():
        for person in people:
            files = sorted(person.glob("*.jpg"))
            if len(files) >= 2:
                (trees["gallery"] / person.name).mkdir(parents=True)
                (trees["gallery"] / person.name / files[0].name).symlink_to(files[0])
                (trees["probes"] / person.name).mkdir(parents=True)
                for f in files[1:]:
                    (trees["probes"] / person.name / f.name).symlink_to(f)
            elif files:
                (trees["distractors"] / person.name).mkdir(parents=True)
                (trees["distractors"] / person.name / files[0].name).symlink_to(files[0])
    t = time.perf_counter()
    metrics = evaluate_identification(recognizer, trees["gallery"], trees["probes"], out / "lfw_identification",
                                      distractor_dir=trees["distractors"], detector_path=detector)
    seconds = time.perf_counter() - t
    keys = ("identification.rank1", "identification.rank5", "identification.dir_at_far_1e-2",
            "identification.num_gallery", "identification.num_mated", "identification.num_nonmated")
    print(f"\n== lfw-dev I..K identification with {recognizer} ({'detector' if detector else 'center crop'}) ==")
    for k in keys:
        print(f"  {k}: {metrics[k]}")
    print(f"  ({seconds:.0f} s; CMC and DIR/FAR plots in {out / 'lfw_identification'})")
    report["lfw"] = {k: metrics[k] for k in keys} | {"recognizer": str(recognizer), "seconds": round(seconds, 1)}


# ------------------------------------------------------------------ open set on real photos

def embed_people(images: Path, people: list[Path], recognizer, aligner):
    """Every photo of `people` aligned (or center-cropped) and embedded once: `(emb, records)`,
    records in row order with file `Name/Name_NNNN.jpg`, detector box/landmarks and fallback."""
    from facepipe.gallery.build import embed_identity_tree

    tree = [(p.name, sorted(p.glob("*.jpg"))) for p in people]
    emb, _, records = embed_identity_tree(tree, images, aligner, recognizer, no_face="center_crop",
                                          desc=f"embedding ({'aligned' if aligner.detector else 'center crop'})")
    rows = sorted((r for r in records if r["row"] is not None), key=lambda r: r["row"])
    return emb, rows


def landmark_report(rows: list[dict]) -> dict:
    """How often the main face's 5 landmarks land inside its own box, and how often they pass the
    aligner's plausibility check (else the face is center-cropped)."""
    found = [r for r in rows if r.get("box")]
    inside = 0
    for r in found:
        x1, y1, x2, y2 = r["box"]
        pts = np.asarray(r["landmarks"], np.float64)
        inside += bool(((pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)).all())
    n = len(rows)
    return {"photos": n, "face_found": len(found) / max(n, 1), "landmarks_inside_box": inside / max(len(found), 1),
            "aligned_on_landmarks": sum(bool(r.get("used_landmarks")) for r in rows) / max(n, 1)}


def pair_verification(pairs_path: Path, emb: np.ndarray, rows: list[dict]) -> dict:
    from facepipe.evaluation.pairs import read_lfw_pairs
    from facepipe.evaluation.verification import verification_metrics

    index = {r["file"]: r["row"] for r in rows}
    pairs = read_lfw_pairs(pairs_path)
    left = [index[f"{p.name1}/{p.name1}_{p.image1:04d}.jpg"] for p in pairs]
    right = [index[f"{p.name2}/{p.name2}_{p.image2:04d}.jpg"] for p in pairs]
    scores = np.sum(emb[left] * emb[right], axis=1)
    return verification_metrics(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))


def open_set_rows(emb: np.ndarray, rows: list[dict], recognizer, aligner, enrol: int, target_far: float) -> dict:
    """People with more than `enrol` photos are enrolled; their later photos are the probes.
    Galleries of one photo vs `enrol` photos per person (plain and quality-weighted means) on the
    SAME probes. Everyone else is a stranger: every other one calibrates the gallery's threshold
    (held apart), the rest measure DIR and the FAR that threshold achieves on new people."""
    from facepipe.evaluation.identification import identification_metrics
    from facepipe.gallery.build import GalleryConfig, make_gallery

    by_person: dict[str, list[dict]] = {}
    for r in rows:
        by_person.setdefault(r["identity"], []).append(r)
    enrolled = sorted(n for n, rs in by_person.items() if len(rs) > enrol)
    strangers = [by_person[n][0]["row"] for n in sorted(by_person) if n not in set(enrolled)]
    held_apart, new_people = emb[strangers[0::2]], emb[strangers[1::2]]
    probes = [r for n in enrolled for r in by_person[n][enrol:]]
    probe_emb, probe_names = emb[[r["row"] for r in probes]], [r["identity"] for r in probes]
    results = {"enrolled_people": len(enrolled), "probes": len(probes), "held_apart_strangers": len(held_apart),
               "test_strangers": len(new_people)}
    variants = [("one photo", 1, "none", True), (f"{enrol} photos mean", enrol, "none", True),
                (f"{enrol} photos norm-weighted", enrol, "embedding_norm", True),
                (f"{enrol} photos, leave-id-out calib.", enrol, "embedding_norm", False)]
    if aligner.detector is not None:
        variants.insert(3, (f"{enrol} photos score-weighted", enrol, "detector_score", True))
    for label, k, weighting, held in variants:
        picked = [dict(r) for n in enrolled for r in by_person[n][:k]]
        labels = np.array([enrolled.index(r["identity"]) for r in picked], np.int32)
        sub = emb[[r["row"] for r in picked]]
        for j, r in enumerate(picked):
            r["row"] = j
        cfg = GalleryConfig(template_weighting=weighting, target_far=target_far)
        gallery = make_gallery(cfg, enrolled, sub, labels, picked, recognizer, aligner, "lfw-dev I..K",
                               held_apart if held else None)
        m, _ = identification_metrics(gallery, probe_emb, probe_names, new_people)
        results[label] = {k2.split(".", 1)[1]: v for k2, v in m.items()} | {
            "calibration_split": gallery.calibration.get("split")}
    return results


def bench_open_set(lfw: Path, recognizer_path: Path, detector: str | None, report: dict, enrol: int = 3,
                   target_far: float = 0.01, max_people: int = 0) -> None:
    """Same recognizer, center crop vs aligned on the detector's landmarks: pairs-dev verification,
    one-photo vs multi-photo templates with a calibrated threshold, landmark statistics."""
    from facepipe.gallery.align import FaceAligner
    from facepipe.gallery.build import fallback_crop
    from facepipe.recognition.embed import Recognizer

    images = lfw / "images"
    people = sorted(p for p in images.iterdir() if p.is_dir() and p.name[:1].upper() in "IJK")
    if max_people:  # short mode: every k-th person, so the many-photo people stay in
        people = people[::max(1, len(people) // max_people)]
    recognizer = Recognizer.load(str(recognizer_path))
    crop = fallback_crop(None, recognizer)
    modes = {"center crop": FaceAligner(None, center_crop=crop)}
    if detector:
        modes["aligned"] = FaceAligner(detector, center_crop=crop)
    out: dict = {}
    for mode, aligner in modes.items():
        t = time.perf_counter()
        emb, rows = embed_people(images, people, recognizer, aligner)
        row = {"seconds_embedding": round(time.perf_counter() - t, 1), "alignment": aligner.summary()}
        if not max_people:
            row["verification"] = pair_verification(lfw / "pairs-dev.txt", emb, rows)
        if aligner.detector is not None:
            row["landmarks"] = landmark_report(rows)
        row["open_set"] = open_set_rows(emb, rows, recognizer, aligner, enrol, target_far)
        out[mode] = row
    report["open_set"] = out
    first = next(iter(out.values()))["open_set"]
    print(f"\n== lfw-dev I..K open set, {recognizer_path}: {first['enrolled_people']} people with > {enrol} photos, "
          f"{first['probes']} probes, strangers {first['held_apart_strangers']} held apart (threshold) + "
          f"{first['test_strangers']} new (FAR) ==")
    print(f"{'faces':<12}{'gallery':<36}{'rank1':>7}{'DIR@1e-2':>9}{'thresh':>8}{'DIR@thr':>8}{'FAR@thr':>8}")
    for mode, row in out.items():
        for label, m in row["open_set"].items():
            if not isinstance(m, dict):
                continue
            print(f"{mode:<12}{label:<36}{m['rank1']:>7.3f}{m['dir_at_far_1e-2']:>9.3f}"
                  f"{m.get('gallery_threshold', float('nan')):>8.3f}{m.get('dir_at_gallery_threshold', float('nan')):>8.3f}"
                  f"{m.get('far_at_gallery_threshold', float('nan')):>8.3f}")
    for mode, row in out.items():
        v = row.get("verification")
        if v:
            print(f"{mode:<12}pairs-dev verification accuracy {v['accuracy']:.4f} AUC {v['auc']:.4f} "
                  f"TAR@1e-3 {v['tar_at_far_1e-3']:.3f}")
        a = row["alignment"]
        print(f"{mode:<12}alignment: {a['alignment.aligned']} aligned on landmarks, {a['alignment.fallback']} "
              f"center-cropped (rate {a['alignment.fallback_rate']})")
        if "landmarks" in row:
            lm = row["landmarks"]
            print(f"{mode:<12}landmarks: face found in {lm['face_found']:.3f} of {lm['photos']} photos; all 5 "
                  f"landmarks inside the face box {lm['landmarks_inside_box']:.3f}; plausible (aligned) "
                  f"{lm['aligned_on_landmarks']:.3f}")
    if len(out) == 2:
        crop_row, al = out["center crop"], out["aligned"]
        key = f"{enrol} photos norm-weighted"
        delta = al["open_set"][key]["dir_at_far_1e-2"] - crop_row["open_set"][key]["dir_at_far_1e-2"]
        line = f"alignment alone (same recognizer): DIR@1e-2 {delta:+.3f}"
        if "verification" in al:
            line += f", verification accuracy {al['verification']['accuracy'] - crop_row['verification']['accuracy']:+.4f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="exact-search gallery sizes")
    parser.add_argument("--approx-sizes", default="100000", help="approximate-search gallery sizes ('' to skip)")
    parser.add_argument("--per-identity", type=int, default=4, help="face-like data: samples per identity")
    parser.add_argument("--noise", type=float, default=0.9, help="face-like data: sample noise norm")
    parser.add_argument("--hnsw-max", type=int, default=100_000, dest="hnsw_max",
                        help="build HNSW only up to this many rows (its build is the slow part on 2 cores)")
    parser.add_argument("--ivf-nprobe", default="8,32", dest="ivf_nprobe", help="IVF lists probed, comma-separated")
    parser.add_argument("--recognizer", help="recognizer model.pt for the lfw-dev part (e.g. bench/lfw_dev.py's)")
    parser.add_argument("--detector", help="detector model.pt to align lfw-dev photos (default: center crop)")
    parser.add_argument("--lfw", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-dev"))
    parser.add_argument("--enrol", type=int, default=3, help="open set: photos per enrolled person's template")
    parser.add_argument("--target-far", type=float, default=0.01, dest="target_far",
                        help="open set: FAR the gallery threshold is calibrated for on held-apart strangers")
    parser.add_argument("--max-people", type=int, default=0, dest="max_people",
                        help="open set short mode: about this many I..K people (0: all; skips pairs-dev)")
    parser.add_argument("--out", default="bench_gallery_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    report: dict = {"exact": {}, "approximate": {}, "threads": os.environ.get("OMP_NUM_THREADS"),
                    "cpus": os.cpu_count()}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        bench_exact(sizes, rng, report)
    approx = [int(s) for s in args.approx_sizes.split(",") if s]
    if approx:
        bench_approx(approx, rng, report, args.per_identity, args.noise, args.hnsw_max,
                     [int(p) for p in args.ivf_nprobe.split(",")])
    if args.recognizer:
        lfw = Path(args.lfw)
        if not (lfw / "images").is_dir():
            print(f"lfw-dev not found at {lfw}: real-photo part skipped", file=sys.stderr)
        else:
            if not args.max_people:
                bench_lfw(lfw, Path(args.recognizer), out, args.detector, report)
            bench_open_set(lfw, Path(args.recognizer), args.detector, report, args.enrol, args.target_far,
                           args.max_people)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "gallery_bench.json").write_text(json.dumps(report, indent=2))
    print(f"\npeak RSS {report['peak_rss_mb']:.0f} MB; results in {out / 'gallery_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
