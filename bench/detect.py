"""Face detection benchmark on real-looking photos: RetinaFace (MobileNet-0.25, ResNet-50) beside OpenCV's Haar cascade.

    python bench/detect.py [--out DIR] [--model M] [--resnet-model M]
    python bench/detect.py --train --out DIR [--minutes 30]      # the proof run (idle machine)
    python bench/detect.py --train --out DIR --minutes 3         # a short end-to-end check

1. builds the evaluation sets from lfw-dev identities I..K (facepipe.data.composite, evaluation
   mode): whole 250x250 photos (head, shoulders, hands, background people) and 640x480 mosaics of
   several whole photos at 16 px..half-image face sizes, some face-free. The main face of each
   photo is labelled from the LFW crop geometry alone, not by the cascade benchmarked here; the
   cascade's other faces are ignored (a detection there counts neither way). Plus synthetic
   scenes with known landmarks (facepipe.data.synth) for the landmark error;
2. with --train: builds the training data (synthetic scenes with landmarks; A..H whole photos and
   mosaics with teacher labels, --teacher: `mtcnn` boxes and 5 landmarks (default), or `haar`
   Haar cascade + LFW geometry, landmarks -1), probes the step rate,
   then trains a MobileNet-0.25 RetinaFace for as many epochs as fit in --minutes (resumable:
   rerun the same command to continue) and writes DIR/model.pt. Under 10 minutes the data is
   shrunk to fit (a pipeline check, not a result);
3. measures images/s at 640x480 on CPU (one image at a time, --threads each) for both backbones
   (an untrained ResNet-50 is timed when no trained one is given) and for the Haar cascade
   (haarcascade_frontalface_default, scale 1.1, 3 neighbours) and the MTCNN teacher (pretrained,
   weights from the facenet-pytorch wheel: a reference, not a contender trained here);
4. scores per set AP@0.5 (all-point; the cascade's scores are its level weights), recall at 1
   FPPI, false positives per image at the operating point (RetinaFace score >= 0.5, the cascade
   as it answers; "on face": those lying mostly on a face, i.e. duplicates and face parts that NMS
   (IoU 0.4, the reference's) left), the landmark error (mean point distance / face size) on the synthetic test
   scenes, the share of main faces on the whole photos whose 5 landmarks all fall inside the
   face box, and on those photos the landmark error against MTCNN's landmarks (the teacher's, on
   people no training saw);
5. prints a table with Haar in the same run; writes DIR/bench_detect.json and DIR/pr_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = ROOT.parent / "shared" / "data" / "lfw-dev"
# One thread by default: on a shared, oversubscribed machine OpenMP's spinning threads made
# 2-thread training ~5x slower than 1 thread (measured here); --threads 2 on an idle machine.
DEFAULT_THREADS = 1

# Chosen for a 30 minute budget on a shared 2-core CPU: the small backbone at 160 px (crops of the
# 640x480 scenes, so faces are seen at 0.3-1x their size), SGD from
# scratch with warmup and a cosine decay over the epochs that fit.
TRAIN_DEFAULTS = {
    "backbone": "mobilenet0.25", "image_size": 160, "batch_size": 16, "optimizer": "sgd", "lr": 0.01,
    "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0.5, "schedule": "cosine", "workers": 1,
    "checkpoint_every": 200, "log_every": 20, "eval_max_images": 60, "min_face_size": 4.0,
    # Whole LFW photos' faces fill ~44% of the side: without this, small crops label face parts as faces.
    "crop_min_visible": 0.7,
}


def haar_detect(cascade, image: np.ndarray) -> np.ndarray:
    """(K, 5) x1 y1 x2 y2 score, with the cascade's final-stage level weight as the score."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    rects, _levels, weights = cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=3, minSize=(16, 16),
                                                        outputRejectLevels=True)
    if len(rects) == 0:
        return np.zeros((0, 5), np.float32)
    rects = np.asarray(rects, np.float32)
    out = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:], np.asarray(weights, np.float32).reshape(-1, 1)], 1)
    return out


def time_per_image(fn, images: list[np.ndarray], warmup: int = 2) -> float:
    """Images per second of fn over images, one at a time, after warmup calls."""
    for im in images[:warmup]:
        fn(im)
    t0 = time.perf_counter()
    for im in images:
        fn(im)
    return len(images) / (time.perf_counter() - t0)


def merge_label_trees(parts: dict[str, Path], out: Path) -> int:
    """One SPLIT folder from several: images linked under prefixes, label paths rewritten."""
    from facepipe.data.labels import LabelledImage, read_labels, write_labels

    (out / "images").mkdir(parents=True, exist_ok=True)
    merged = []
    for prefix, split_dir in parts.items():
        link = out / "images" / prefix
        if not link.exists():
            link.symlink_to(split_dir.resolve() / "images", target_is_directory=True)
        merged += [LabelledImage(f"{prefix}/{item.path}", item.faces) for item in read_labels(split_dir / "label.txt")]
    write_labels(out / "label.txt", merged)
    return len(merged)


# Data sizes: the full run's, and the short check's (--minutes under 10), which only proves the path.
SIZES = {"full": {"photos": 2000, "composites": 1200, "synth_scenes": 800},
         "short": {"photos": 150, "composites": 100, "synth_scenes": 100}}
# The RetinaFace operating point for false positives per image (facepipe detect's default).
OPERATING_SCORE = 0.5


def build_training_data(out: Path, lfw: Path, sizes: dict, teacher: str) -> Path:
    from facepipe.data.composite import CompositeConfig, build_composites
    from facepipe.data.synth import SynthConfig, synthesize

    data = out / f"data_{teacher}"
    if (data / "train" / "label.txt").exists() and (data / "val" / "label.txt").exists():
        return data
    synthesize(SynthConfig(identities=1, images=1, eval_identities=0, scenes=sizes["synth_scenes"], scene_size=320,
                           val_fraction=0.05, test_fraction=0.05, seed=11), data / "synth")
    build_composites(CompositeConfig(scenes=sizes["composites"], photos=sizes["photos"], whole_photos=True,
                                     first_letters="ABCDEFGH", teacher=teacher, seed=21), lfw, data / "lfw_train")
    build_composites(CompositeConfig(scenes=max(10, sizes["composites"] // 20), photos=max(20, sizes["photos"] // 20),
                                     whole_photos=True, first_letters="ABCDEFGH", teacher=teacher, seed=22), lfw,
                     data / "lfw_val")
    merge_label_trees({"synth": data / "synth" / "detection" / "train", "lfw": data / "lfw_train"}, data / "train")
    merge_label_trees({"synth": data / "synth" / "detection" / "val", "lfw": data / "lfw_val"}, data / "val")
    return data


def train(out: Path, lfw: Path, minutes: float, sets: dict, sizes: dict, teacher: str) -> Path:
    from facepipe.config import from_dict
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.detection.data import load_samples
    from facepipe.detection.train import train_detection
    from facepipe.training.checkpoint import latest_checkpoint

    t0 = time.monotonic()
    data = build_training_data(out, lfw, sizes, teacher)
    n_train = len(load_samples(data / "train" / "label.txt"))
    print(f"training data: {n_train} images ({time.monotonic() - t0:.0f}s to build)", flush=True)
    values = TRAIN_DEFAULTS | sets
    run_dir = out / "train"
    # Time kept for export, validation and scoring after training.
    reserve_s = min(150.0, 0.2 * minutes * 60)
    if latest_checkpoint(run_dir) is None:
        probe_dir = Path(tempfile.mkdtemp(prefix="detect-probe-"))
        probe = from_dict(DetectionTrainConfig, values | {"epochs": 1, "max_steps": 8, "export_onnx": False,
                                                           "checkpoint_every": 0, "eval_max_images": 1})
        rate = train_detection(probe, data, probe_dir)["train.steady_images_per_s"]
        shutil.rmtree(probe_dir, ignore_errors=True)
        left_s = minutes * 60 - (time.monotonic() - t0) - reserve_s
        epochs = max(1, int(rate * left_s / n_train))
        print(f"probe: {rate:.1f} images/s -> {epochs} epochs in {left_s / 60:.1f} min", flush=True)
        (out / "train_plan.json").write_text(json.dumps({"epochs": epochs, "probe_images_per_s": rate}))
    epochs = json.loads((out / "train_plan.json").read_text())["epochs"]
    left_min = minutes - (time.monotonic() - t0 + reserve_s) / 60
    cfg = from_dict(DetectionTrainConfig, values | {"epochs": epochs, "time_budget_min": max(0.5, left_min)})
    metrics = train_detection(cfg, data, run_dir)
    shutil.copy(run_dir / "model.pt", out / "model.pt")
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("val.faces")}, indent=1), flush=True)
    return out / "model.pt"


def evaluation_sets(out: Path, lfw: Path, photos: int, mosaics: int, synth_scenes: int) -> dict[str, Path]:
    """The I..K whole photos and mosaics, and synthetic test scenes; built once per OUT."""
    from facepipe.data.composite import CompositeConfig, build_composites
    from facepipe.data.synth import SynthConfig, synthesize

    sets = {"photos_IJK": out / f"eval_photos_IJK_{photos}", "mosaics_IJK": out / f"eval_mosaics_IJK_{mosaics}",
            "synth": out / f"eval_synth_{synth_scenes}" / "detection" / "test"}
    if not (sets["photos_IJK"] / "manifest.json").exists():
        build_composites(CompositeConfig(scenes=0, photos=photos, whole_photos=True, evaluation=True,
                                         first_letters="IJK", seed=1234), lfw, sets["photos_IJK"])
    if not (sets["mosaics_IJK"] / "manifest.json").exists():
        build_composites(CompositeConfig(scenes=mosaics, evaluation=True, first_letters="IJK", seed=1235), lfw,
                         sets["mosaics_IJK"])
    if not (sets["synth"] / "label.txt").exists():
        synthesize(SynthConfig(identities=1, images=1, eval_identities=0, scenes=synth_scenes, scene_size=320,
                               val_fraction=0.0, test_fraction=0.8, seed=777), sets["synth"].parents[1])
    return sets


def operating_false_positives(predictions, truth, ignore, min_score: float) -> tuple[int, int]:
    """(false positives among detections scoring >= min_score, how many of them lie mostly (>= half
    their area) on a face: duplicates and face parts NMS left, rather than hands or clothing).
    Ignored faces count neither way."""
    from facepipe.detection.evaluate import match_image

    fp = on_faces = 0
    for dets, gts, ign in zip(predictions, truth, ignore):
        dets = np.asarray(dets, np.float64)
        dets = dets[dets[:, 4] >= min_score] if len(dets) else np.zeros((0, 5))
        dets = dets[np.argsort(-dets[:, 4])]  # match_image's order, so outcomes line up
        faces = np.concatenate([np.asarray(gts, np.float64).reshape(-1, 4), np.asarray(ign, np.float64).reshape(-1, 4)])
        _scores, outcome, _n = match_image(dets, np.asarray(gts, np.float64).reshape(-1, 4), 0.5, 0.0, ign)
        wrong = dets[outcome == 0]
        fp += len(wrong)
        if len(wrong) and len(faces):
            lt = np.maximum(wrong[:, None, :2], faces[None, :, :2])
            rb = np.minimum(wrong[:, None, 2:4], faces[None, :, 2:4])
            inter = np.clip(rb - lt, 0, None).prod(2)
            own = np.clip(wrong[:, 2:4] - wrong[:, :2], 1e-9, None).prod(1)
            on_faces += int(((inter / own[:, None]).max(1) >= 0.5).sum())
    return fp, on_faces


def main_face_detection(dets, gts):
    """The highest-scoring detection overlapping a photo's main (first) face at IoU >= 0.5, or None."""
    from facepipe.detection.evaluate import box_iou

    if not len(dets) or not len(gts):
        return None
    overlaps = box_iou(np.asarray(gts, np.float64)[:1, :4], np.asarray(dets, np.float64)[:, :4])[0]
    ok = np.flatnonzero(overlaps >= 0.5)
    return dets[ok[int(np.asarray(dets)[ok, 4].argmax())]] if len(ok) else None


def landmarks_inside(predictions, truth) -> tuple[int, int]:
    """(main faces whose best-matching detection has all 5 landmarks inside the face box, main faces matched)."""
    inside = matched = 0
    for dets, gts in zip(predictions, truth):
        det = main_face_detection(dets, gts)
        if det is None:
            continue
        x1, y1, x2, y2 = gts[0][:4]
        pts = np.asarray(det[5:15]).reshape(5, 2)
        matched += 1
        inside += bool(((pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)).all())
    return inside, matched


def landmark_error_against(predictions, truth, reference) -> np.ndarray:
    """Per main face: mean distance between the best-matching detection's landmarks and the
    reference detector's (its main face), over the face box side; faces either misses are skipped."""
    from facepipe.detection.evaluate import box_iou

    errors = []
    for dets, gts, refs in zip(predictions, truth, reference):
        det = main_face_detection(dets, gts)
        if det is None or not len(refs):
            continue
        gt = np.asarray(gts, np.float64)[:1, :4]
        ref = refs[int(box_iou(gt, np.asarray(refs, np.float64)[:, :4])[0].argmax())]
        if box_iou(gt, np.asarray(ref[None, :4], np.float64))[0, 0] < 0.4:
            continue
        distance = np.linalg.norm(np.asarray(det[5:15]).reshape(5, 2) - ref[5:15].reshape(5, 2), axis=1)
        errors.append(distance.mean() / (gt[0, 2] - gt[0, 0]))
    return np.asarray(errors)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output folder (default: a temporary one)")
    ap.add_argument("--lfw", default=str(LFW_DEV))
    ap.add_argument("--model", help="a trained MobileNet-0.25 (or any) detector model.pt to score")
    ap.add_argument("--resnet-model", help="a trained ResNet-50 detector model.pt")
    ap.add_argument("--photos", type=int, default=300, help="evaluation: whole I..K photos (250x250)")
    ap.add_argument("--images", type=int, default=100, help="evaluation: I..K mosaics (640x480)")
    ap.add_argument("--synth-images", type=int, default=60, help="evaluation: synthetic scenes (80%% kept as test)")
    ap.add_argument("--speed-images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch and OpenCV threads")
    ap.add_argument("--train", action="store_true", help="train the detector first (needs --out)")
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="--train: total budget; under 10 the training data is shrunk (a pipeline check)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="--train: config override")
    ap.add_argument("--teacher", choices=["mtcnn", "haar"], default="mtcnn",
                    help="--train: who labels the A..H photos (mtcnn: boxes and landmarks; haar: boxes)")
    args = ap.parse_args(argv)
    lfw = Path(args.lfw)
    if not (lfw / "images").is_dir():
        print(f"skipped: lfw-dev photos not found at {lfw}", file=sys.stderr)
        return 0
    if args.train and not args.out:
        ap.error("--train needs --out DIR")
    threads = args.threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from facepipe.config import from_dict, parse_sets
    from facepipe.data.composite import read_ignored
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.detection.data import load_samples, read_image
    from facepipe.detection.evaluate import ground_truth_boxes, landmark_errors, plot_pr_curves, score_detections
    from facepipe.detection.infer import Detector, load_detector
    from facepipe.detection.model import build_model

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-detect-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    model_path = args.model
    mode = "full" if args.minutes >= 10 else "short"
    if args.train:
        print(f"training: {mode} data sizes {SIZES[mode]}", flush=True)
        model_path = str(train(out, lfw, args.minutes, parse_sets(args.set), SIZES[mode], args.teacher))

    sets = {}
    for name, split in evaluation_sets(out, lfw, args.photos, args.images, args.synth_images).items():
        samples = load_samples(split / "label.txt")
        ignored = read_ignored(split)
        sets[name] = {"samples": samples, "images": [read_image(s.path) for s in samples],
                      "truth": ground_truth_boxes(samples),
                      "ignore": [ignored.get(s.path.relative_to(split / "images").as_posix(), np.zeros((0, 4)))
                                 for s in samples]}
    speed_images = sets["mosaics_IJK"]["images"][:args.speed_images]

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    mtcnn = load_detector("mtcnn")
    contenders = {"haar": {"detect": lambda im: haar_detect(cascade, im), "trained": True, "weights": "OpenCV",
                           "operating": -np.inf},
                  "mtcnn_teacher": {"detect": mtcnn.detect, "trained": True, "operating": -np.inf,
                                    "weights": "facenet-pytorch wheel (pretrained, reference)"}}
    for name, backbone, path in (("retinaface_mobilenet0.25", "mobilenet0.25", model_path),
                                 ("retinaface_resnet50", "resnet50", args.resnet_model)):
        if path:
            detector = Detector.load(path)
            weights = path
        else:
            torch.manual_seed(0)
            cfg = from_dict(DetectionTrainConfig, {"backbone": backbone})
            detector = Detector(build_model(cfg).eval(), cfg)
            weights = "untrained (random init): speed only"
        # Timed at the operating threshold; scored over the whole PR curve (the reference's 0.02).
        contenders[name] = {"speed": (lambda d: lambda im: d.detect(im, OPERATING_SCORE, 0.4))(detector),
                            "detect": (lambda d: lambda im: d.detect(im, 0.02, 0.4))(detector),
                            "trained": bool(path), "weights": weights, "operating": OPERATING_SCORE}

    results = {}
    curves = {}
    reference = {}  # the teacher's detections per set: landmarks to compare against
    for name, c in contenders.items():
        ips = time_per_image(c.get("speed", c["detect"]), speed_images)
        results[name] = {"images_per_s": ips, "trained": c["trained"], "weights": c["weights"], "sets": {}}
        if not c["trained"]:  # random weights have no accuracy worth scoring
            print(f"{name}: {ips:.2f} images/s (untrained)", flush=True)
            continue
        for set_name, data in sets.items():
            predictions = [c["detect"](im) for im in data["images"]]
            if name == "mtcnn_teacher":
                reference[set_name] = predictions
            metrics, curve = score_detections(predictions, data["truth"], prefix="d", ignore=data["ignore"])
            row = {key: metrics[f"d.{key}"] for key in ("ap50", "ap50_easy", "ap50_medium", "ap50_hard",
                                                         "recall_at_1fppi", "faces_hard")}
            fp, on_faces = operating_false_positives(predictions, data["truth"], data["ignore"], c["operating"])
            row["fp_per_image"] = fp / max(len(predictions), 1)
            row["fp_on_faces_per_image"] = on_faces / max(len(predictions), 1)
            if name != "haar" and set_name == "synth":
                errors = landmark_errors(predictions, data["samples"])
                row |= {"landmark_nme": float(errors.mean()) if len(errors) else float("nan"),
                        "landmark_faces": len(errors)}
            if name != "haar" and set_name == "photos_IJK":
                inside, matched = landmarks_inside(predictions, data["truth"])
                row |= {"landmarks_inside": inside / max(matched, 1), "landmarks_matched": matched}
                if name != "mtcnn_teacher":
                    errors = landmark_error_against(predictions, data["truth"], reference[set_name])
                    row |= {"landmark_nme_vs_mtcnn": float(np.median(errors)) if len(errors) else float("nan"),
                            "landmark_nme_vs_mtcnn_faces": len(errors)}
            results[name]["sets"][set_name] = row
            curves[f"{name} {set_name}"] = curve["hard"]
            print(f"{name} on {set_name}: AP50 {row['ap50']:.3f}, {row['fp_per_image']:.2f} FP/image", flush=True)

    print(f"\nI..K whole photos: {len(sets['photos_IJK']['images'])} (250x250); I..K mosaics: "
          f"{len(sets['mosaics_IJK']['images'])} (640x480); synthetic test scenes: {len(sets['synth']['images'])}. "
          f"Labels: main faces from the LFW geometry, other cascade-found faces ignored; speed over "
          f"{len(speed_images)} mosaics 640x480, {threads} thread(s), CPU")
    base = results["haar"]["images_per_s"]
    print(f"{'detector':26s} {'set':12s} {'AP50':>6s} {'easy':>6s} {'medium':>6s} {'hard':>6s} {'R@1fppi':>8s} "
          f"{'FP/img':>7s} {'on face':>7s} {'lm NME':>7s} {'lm in':>6s} {'vs MTCNN':>8s}")
    for name, r in results.items():
        for set_name, row in r["sets"].items():
            nme = f"{row['landmark_nme']:7.3f}" if "landmark_nme" in row else f"{'':7s}"
            inside = f"{row['landmarks_inside']:6.2f}" if "landmarks_inside" in row else f"{'':6s}"
            inside += f" {row['landmark_nme_vs_mtcnn']:8.3f}" if "landmark_nme_vs_mtcnn" in row else ""
            print(f"{name:26s} {set_name:12s} {row['ap50']:6.3f} {row['ap50_easy']:6.3f} {row['ap50_medium']:6.3f} "
                  f"{row['ap50_hard']:6.3f} {row['recall_at_1fppi']:8.3f} {row['fp_per_image']:7.2f} "
                  f"{row['fp_on_faces_per_image']:7.2f} {nme} {inside}")
    print(f"\n{'detector':26s} {'img/s 640x480':>14s} {'vs haar':>8s}  weights")
    for name, r in results.items():
        print(f"{name:26s} {r['images_per_s']:14.2f} {r['images_per_s'] / base:7.2f}x  {r['weights']}")
    if curves:
        plot_pr_curves(curves, out / "pr_curves.png", title="lfw-dev I..K photos and mosaics, synthetic; IoU 0.5")
    report = {"eval_images": {k: len(v["images"]) for k, v in sets.items()},
              "eval_faces": {k: int(sum(len(t) for t in v["truth"])) for k, v in sets.items()},
              "mode": mode if args.train else "score", "minutes": args.minutes if args.train else None,
              "speed_size": "640x480", "threads": threads, "operating_score": OPERATING_SCORE, "results": results,
              "seconds": time.monotonic() - t_start, "torch": torch.__version__, "opencv": cv2.__version__}
    (out / "bench_detect.json").write_text(json.dumps(report, indent=2))
    print(f"\nreport: {out / 'bench_detect.json'}, PR curves: {out / 'pr_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
