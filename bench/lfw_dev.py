"""LFW-dev benchmark: train a recognizer on identities A..H, verify on pairs-dev.txt (identities I..K).

    python bench/lfw_dev.py [--minutes 30] [--out DIR] [--set key=value ...]

1. crops the face region of every A..H photo (LFW faces sit roughly centred in 250x250; the
   recognizer's `center_crop` records the share kept) and packs identities with >= --min-images
   images with `facepipe.data.pack` at the training input size;
2. trains for --minutes of wall-clock time (`time_budget_min`: the cosine LR decay follows the
   elapsed share of the budget, so the run ends annealed whatever the machine's load);
3. scores pairs-dev.txt with `evaluate_verification` (10-fold accuracy, AUC, TAR@FAR), and the
   classical baseline on the same crops in the same script: uniform LBP(8,1) histograms on a
   7x7 grid compared with the chi-square distance;
4. prints both and writes DIR/bench_lfw_dev.json; DIR/model.pt is the recognizer;
5. open-set identification on I..K (bench/gallery.py's part 4): one-photo vs multi-photo templates,
   DIR at FAR 1e-2, the threshold calibrated on held-apart strangers and the FAR it gives on others;
6. with --detector DET (repeatable; a model.pt, or `mtcnn` for the pretrained teacher): the same
   config trained again for the same budget on A..H photos aligned on DET's landmarks (`pack
   --detector`, center crop where it finds no face or implausible landmarks), verified on aligned
   pairs-dev faces: the effect of alignment alone, side by side; with --align DET the main row
   (and the study's rows) train and score on DET-aligned faces instead, and --detector rows are
   printed beside it;
7. the recipe study: each --variant NAME=key=value[,key=value] (and with --anchor, the
   arcface_torch defaults: IResNet-50 at 112 px, ArcFace s=64 m=0.5, SGD 0.1, poly decay, flip
   only) trained from scratch for the same --minutes on the same identities, its pairs-dev
   accuracy printed beside the current recipe's. Two variant keys change the packed set instead
   of the config: `min_images` (1: identities with one photo become extra classes) and
   `identities` (a share of the A..H identities, spread evenly over the alphabet: the data curve,
   how accuracy grows with the number of training identities).

    python bench/lfw_dev.py --minutes 6 --no-identification --anchor \
        --variant min1=min_images=1 --variant wd5e-3=weight_decay=5e-3 --variant w0.5=width=0.5
    python bench/lfw_dev.py --minutes 5 --no-identification --align mtcnn \
        --variant ids25=identities=0.25 --variant ids50=identities=0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = ROOT.parent / "shared" / "data" / "lfw-dev"

# Settings chosen for a ~30 minute, 2-core CPU budget. Measured on a shared, loaded machine (nice 10):
# lr 0.05, warmup 1 epoch: 2.6 epochs, 77.3% vs LBP 66.7%; lr 0.1, warmup capped at 10% of the
# budget: 5.9 epochs, 79.3% (AUC 0.859) vs 66.7%.
# a narrow IResNet-18 at 56 px, CosFace with a moderate scale, batch 32 (more updates per
# CPU-second), shift/scale/brightness augmentation.
DEFAULTS = {
    "backbone": "iresnet18", "width": 0.25, "input_size": 56, "embedding_size": 128,
    "loss": "cosface", "scale": 32.0, "m3": 0.25, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
    "weight_decay": 5e-4, "warmup_epochs": 1.0, "schedule": "cosine", "batch_size": 32,
    "augment": "flip_jitter", "amp": True, "dropout": 0.0, "clip_grad": 5.0, "center_crop": 0.5,
    "workers": 1, "checkpoint_every": 200, "export_onnx": True, "log_every": 20,
}


# arcface_torch's defaults (configs/base.py and the r50 configs), as far as facepipe's config names them
ANCHOR = {
    "backbone": "iresnet50", "width": 1.0, "input_size": 112, "embedding_size": 512, "loss": "arcface",
    "scale": 64.0, "m2": 0.5, "m3": None, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "warmup_epochs": 0.0, "schedule": "poly", "batch_size": 128, "augment": "flip", "dropout": 0.0,
}  # the faces are the same crops as every other row's (center_crop): the recipe differs, not the data


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME=key=value[,key=value...]` -> (NAME, {key: value}) with values parsed as --set does."""
    from facepipe.config import parse_sets

    name, sep, rest = text.partition("=")
    if not sep or not name or "=" not in rest:
        raise SystemExit(f"--variant {text!r}: expected NAME=key=value[,key=value...]")
    return name, parse_sets(rest.split(","))


def people(lfw: Path, initials: str, min_images: int, share: float = 1.0):
    """(person folder, sorted photos) of identities starting with `initials` with >= min_images photos;
    with share < 1 only that share of them, spread evenly over the sorted names."""
    kept = 0
    for person in sorted((lfw / "images").iterdir()):
        files = sorted(person.glob("*.jpg"))
        if person.name[0] in initials and len(files) >= min_images:
            if int((kept + 1) * share) > int(kept * share):
                yield person, files
            kept += 1


def crop_tree(lfw: Path, out: Path, initials: str, crop: float, size: int, min_images: int,
              share: float = 1.0) -> int:
    """Write the centre crops of identities starting with `initials` as an identity tree; returns images."""
    from facepipe.data.crop import center_crop_resize

    n = 0
    for person, files in people(lfw, initials, min_images, share):
        (out / person.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            face = center_crop_resize(cv2.imread(str(f)), size, crop)
            cv2.imwrite(str(out / person.name / f.name), face, [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
    return n


# ------------------------------------------------------------------------------ LBP baseline

def _uniform_lbp_table() -> np.ndarray:
    """8-bit code -> bin: the 58 uniform patterns (<= 2 circular 0/1 transitions) get their own bin, the rest bin 58."""
    table = np.full(256, 58, np.int64)
    k = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            table[code] = k
            k += 1
    return table


def lbp_histogram(gray: np.ndarray, grid: int = 7, table=_uniform_lbp_table()) -> np.ndarray:
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    code = np.zeros_like(c, dtype=np.uint8)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    for bit, (dy, dx) in enumerate(offsets):
        nb = g[1 + dy:g.shape[0] - 1 + dy, 1 + dx:g.shape[1] - 1 + dx]
        code |= ((nb >= c).astype(np.uint8) << bit)
    bins = table[code]
    h, w = bins.shape
    hists = []
    for i in range(grid):
        for j in range(grid):
            cell = bins[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid]
            hist = np.bincount(cell.ravel(), minlength=59).astype(np.float64)
            hists.append(hist / max(hist.sum(), 1.0))
    return np.concatenate(hists)


def lbp_baseline(pairs_path: Path, images_dir: Path, crop: float, size: int = 128) -> dict:
    """LFW-protocol metrics of -chi-square distance between LBP histograms of the same crops."""
    from facepipe.evaluation.pairs import load_verification_set
    from facepipe.evaluation.verification import verification_metrics
    from facepipe.data.crop import center_crop_resize

    target = load_verification_set(pairs_path, images_dir,
                                   lambda img: center_crop_resize(img, size, crop))
    hists = np.stack([lbp_histogram(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) for f in target.faces])
    a, b = hists[target.left], hists[target.right]
    chi2 = np.sum((a - b) ** 2 / (a + b + 1e-10), axis=1)
    return verification_metrics(-chi2, target.same, target.folds)


# ------------------------------------------------------------------------------ the benchmark

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (default 30)")
    ap.add_argument("--out", help="output folder (default: a temp folder); DIR/model.pt is the recognizer")
    ap.add_argument("--lfw", default=str(LFW_DEV), help="lfw-dev folder (images/, pairs-dev.txt)")
    ap.add_argument("--min-images", type=int, default=2, help="train on identities with at least this many images")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config override")
    ap.add_argument("--align", metavar="DET",
                    help="detector model.pt, or mtcnn: the main row (and the study's rows) train and score on "
                         "faces aligned on its landmarks instead of center crops")
    ap.add_argument("--detector", action="append", default=[],
                    help="detector model.pt, or mtcnn (repeatable): also train and score on faces aligned on "
                         "its landmarks (same config and budget), printed beside the center crop")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="recipe study: also train this setting for the same budget, printed beside the current one")
    ap.add_argument("--anchor", action="store_true",
                    help="recipe study: add the arcface_torch defaults (IResNet-50, ArcFace s=64 m=0.5, SGD 0.1, poly)")
    ap.add_argument("--no-identification", action="store_true", dest="no_identification",
                    help="skip the open-set identification rows")
    args = ap.parse_args(argv)

    from facepipe.config import from_dict, parse_sets
    from facepipe.evaluation.verification_step import evaluate_verification
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.recognition.train import train_recognition

    lfw = Path(args.lfw)
    pairs = lfw / "pairs-dev.txt"
    if not (lfw / "images").is_dir() or not pairs.is_file():
        print(f"lfw-dev not found at {lfw} (needs images/ and pairs-dev.txt); skipping", file=sys.stderr)
        return 0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lfw_dev_"))
    out.mkdir(parents=True, exist_ok=True)
    values = {**DEFAULTS, **parse_sets(args.set)}
    cfg = from_dict(RecognitionTrainConfig, values, source="bench/lfw_dev.py")
    rec, _ = training_set(lfw, out, cfg, args.min_images, args.align)

    # the budget is wall-clock: the LR schedule follows the elapsed share of it (time_budget_min)
    cfg = from_dict(RecognitionTrainConfig, {**values, "epochs": 1000, "time_budget_min": args.minutes},
                    source="bench/lfw_dev.py")
    train_dir = out / "train"
    shutil.rmtree(train_dir, ignore_errors=True)  # every benchmark run trains from scratch
    t1 = time.perf_counter()
    train_metrics = train_recognition(cfg, rec, train_dir)
    train_s = time.perf_counter() - t1
    for name in ("model.pt", "model.onnx"):
        if (train_dir / name).exists():
            shutil.copy2(train_dir / name, out / name)
    ours = evaluate_verification(out / "model.pt", pairs, lfw / "images", out / "eval", detector_path=args.align)
    lbp = lbp_baseline(pairs, lfw / "images", cfg.center_crop)
    report = {
        "config": {k: v for k, v in values.items()}, "minutes": args.minutes, "faces": faces_label(args.align), "classes": train_metrics["num_classes"], "steps": train_metrics["steps"],
        "epochs": round(train_metrics["steps"] * cfg.batch_size / train_metrics["num_images"], 2), "train_seconds": round(train_s, 1),
        "train_final_loss": train_metrics.get("train.loss"), "train_accuracy": train_metrics.get("train.accuracy"),
        "recognizer": {k.split(".", 1)[1]: v for k, v in ours.items()},
        "lbp_chi2": lbp,
        "accuracy_gain_points": round(100 * (ours["verification.accuracy"] - lbp["accuracy"]), 2),
    }
    print(f"{'method':<28}{'accuracy':>14}{'AUC':>8}{'TAR@1e-2':>10}")
    print(f"{'recognizer (' + faces_label(args.align) + ')':<28}{ours['verification.accuracy']:>8.4f} +-{ours['verification.accuracy_std']:.3f}"
          f"{ours['verification.auc']:>8.4f}{ours['verification.tar_at_far_1e-2']:>10.4f}")
    print(f"{'LBP u2 8,1 7x7 chi-square':<28}{lbp['accuracy']:>8.4f} +-{lbp['accuracy_std']:.3f}"
          f"{lbp['auc']:>8.4f}{lbp['tar_at_far_1e-2']:>10.4f}")
    print(f"gain: {report['accuracy_gain_points']} accuracy points (goal >= 10); trained {report['epochs']} epochs in "
          f"{train_s / 60:.1f} min; recognizer at {out / 'model.pt'}")
    for detector in args.detector:
        label = aligned_label(detector)
        aligned = train_aligned(lfw, out, values, args.minutes, args.min_images, detector)
        if args.align:
            aligned["vs"] = faces_label(args.align)
        report.setdefault("aligned", {})[label] = aligned
        print(f"{'aligned on ' + label:<28}{aligned['accuracy']:>8.4f} +-{aligned['accuracy_std']:.3f}"
              f"{aligned['auc']:>8.4f}{aligned['tar_at_far_1e-2']:>10.4f}")
        print(f"alignment alone on {label} (same config and budget, vs {faces_label(args.align)}): accuracy "
              f"{aligned['accuracy'] - ours['verification.accuracy']:+.4f}, "
              f"AUC {aligned['auc'] - ours['verification.auc']:+.4f}; training faces aligned "
              f"{aligned['pack_aligned']}/{aligned['pack_images']}, pairs-dev faces aligned "
              f"{aligned['eval_aligned']}/{aligned['eval_faces']}", flush=True)
    if not args.no_identification:
        sys.path.insert(0, str(ROOT))
        from bench.gallery import bench_open_set

        bench_open_set(lfw, out / "model.pt", args.align, report)
        for detector in args.detector:
            label = aligned_label(detector)
            bench_open_set(lfw, out / f"aligned-{label}" / "model.pt", detector, report["aligned"][label])
    variants = [parse_variant(v) for v in args.variant]
    if args.anchor:
        variants.insert(0, ("arcface_torch", dict(ANCHOR)))
    if variants:
        report["study"] = study(lfw, out, values, args.minutes, args.min_images, variants, report, args.align)
    (out / "bench_lfw_dev.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


def training_set(lfw: Path, out: Path, cfg, min_images: int, align: str | None = None,
                 share: float = 1.0) -> tuple[Path, dict]:
    """A..H (or `share` of its identities) packed at cfg.input_size, once per (faces, size, crop,
    min_images, share) under out/work: center crops, or (`align`) photos aligned on a detector's
    landmarks. Returns the folder and the pack's report (pack_report.json: images_packed,
    alignment.aligned, ...)."""
    from facepipe.data.pack import REPORT, PackConfig, pack
    from facepipe.manifest import sha256_file

    size, crop = cfg.input_size, cfg.center_crop
    # a detector model.pt is keyed by its content: a retrained detector in the same folder repacks
    faces = "center" if not align else "mtcnn" if align == "mtcnn" else f"aligned-{sha256_file(align)[:12]}"
    subset = f"{min_images}" + (f"-share{share:g}" if share < 1 else "")
    rec = out / "work" / f"rec-{faces}-{size}-{crop:g}-{subset}"
    if (rec / "manifest.json").exists():
        return rec, json.loads((rec / REPORT).read_text())
    started = time.perf_counter()
    if align:
        photos = out / "work" / f"photos-{subset}"  # links to the shared photos: nothing copied
        if not photos.exists():
            link_tree(lfw, photos, "ABCDEFGH", min_images, share)
        packed = pack(PackConfig(size=size, workers=2, min_images=min_images, detector=align, center_crop=crop),
                      photos, rec, progress=False)
        how = f"aligned on {aligned_label(align)} ({packed.get('alignment.aligned')} of {packed['images_packed']})"
    else:
        tree = out / "work" / f"crops-{size}-{crop:g}-{subset}"
        crop_tree(lfw, tree, "ABCDEFGH", crop, size, min_images, share)
        packed = pack(PackConfig(size=size, workers=1, min_images=min_images), tree, rec, progress=False)
        shutil.rmtree(tree)
        how = "center crops"
    print(f"packed {packed['images_packed']} A..H images of {packed['identities_packed']} identities at {size} px "
          f"(>= {min_images} photos{f', share {share:g}' if share < 1 else ''}), {how}, "
          f"in {time.perf_counter() - started:.1f}s", flush=True)
    return rec, packed


def link_tree(lfw: Path, photos: Path, initials: str, min_images: int, share: float = 1.0) -> None:
    """Symlinks to the photos of identities starting with `initials` that have >= min_images photos."""
    for person, files in people(lfw, initials, min_images, share):
        (photos / person.name).mkdir(parents=True)
        for f in files:
            (photos / person.name / f.name).symlink_to(f)


def faces_label(align: str | None) -> str:
    return f"aligned {aligned_label(align)}" if align else "center crop"


def study(lfw: Path, out: Path, values: dict, minutes: float, min_images: int, variants: list,
          report: dict, align: str | None = None) -> list[dict]:
    """Train each variant for the same budget on the same identities and faces (center crops, or
    aligned on `align`); pairs-dev beside the current recipe."""
    from facepipe.config import from_dict
    from facepipe.evaluation.verification_step import evaluate_verification
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.recognition.train import train_recognition

    base = report["recognizer"]
    rows = [{"name": "current", "overrides": {}, "classes": report["classes"], "epochs": report["epochs"], "steps": report["steps"],
             "train_loss": report["train_final_loss"], "accuracy": base["accuracy"], "auc": base["auc"]}]
    for name, overrides in variants:
        overrides = dict(overrides)
        least = int(overrides.pop("min_images", min_images))
        share = float(overrides.pop("identities", 1.0))
        if not 0 < share <= 1:
            raise SystemExit(f"--variant {name}: identities={share:g} is a share of the A..H identities, in (0, 1]")
        merged = {**values, **overrides, "epochs": 1000, "time_budget_min": minutes}
        cfg = from_dict(RecognitionTrainConfig, merged, source=f"bench/lfw_dev.py --variant {name}")
        rec, _ = training_set(lfw, out, cfg, least, align, share)
        run = out / "study" / name
        shutil.rmtree(run, ignore_errors=True)
        print(f"study: training {name} ({overrides or 'current recipe'}"
              f"{f', min_images {least}' if least != min_images else ''}"
              f"{f', {share:g} of the identities' if share < 1 else ''}) for {minutes:g} min", flush=True)
        got = train_recognition(cfg, rec, run / "train")
        found = evaluate_verification(run / "train" / "model.pt", lfw / "pairs-dev.txt", lfw / "images", run / "eval",
                                      detector_path=align)
        shutil.rmtree(run / "train" / "checkpoints", ignore_errors=True)
        data = {**({"min_images": least} if least != min_images else {}), **({"identities": share} if share < 1 else {})}
        rows.append({"name": name, "overrides": {**overrides, **data}, "classes": got["num_classes"],
                     "epochs": round(got["steps"] * cfg.batch_size / got["num_images"], 2), "steps": got["steps"],
                     "train_loss": got.get("train.loss"), "accuracy": found["verification.accuracy"],
                     "auc": found["verification.auc"]})
    print(f"recipe study, {minutes:g} min each on the same A..H identities, {faces_label(align)} (pairs-dev, I..K):")
    print(f"{'setting':<16}{'classes':>8}{'epochs':>8}{'loss':>9}{'accuracy':>10}{'AUC':>8}{'vs current':>12}  overrides")
    for r in rows:
        loss = f"{r['train_loss']:.3f}" if isinstance(r["train_loss"], (int, float)) else "-"
        print(f"{r['name']:<16}{r['classes']:>8}{r['epochs']:>8}{loss:>9}{r['accuracy']:>10.4f}{r['auc']:>8.4f}"
              f"{100 * (r['accuracy'] - base['accuracy']):>+11.2f}p  {r['overrides'] or ''}")
    return rows


def aligned_label(detector: str) -> str:
    """A short name for an aligned row: `mtcnn`, or the detector model's folder name."""
    return detector if detector == "mtcnn" else Path(detector).resolve().parent.name


def train_aligned(lfw: Path, out: Path, values: dict, minutes: float, min_images: int, detector: str) -> dict:
    """Pack A..H photos aligned on `detector`'s landmarks, train the same config for the same
    budget, verify pairs-dev on aligned faces; the metrics and how many faces were aligned."""
    from facepipe.config import from_dict
    from facepipe.evaluation.verification_step import evaluate_verification
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.recognition.train import train_recognition

    cfg = from_dict(RecognitionTrainConfig, {**values, "epochs": 1000, "time_budget_min": minutes},
                    source="bench/lfw_dev.py")
    rec, packed = training_set(lfw, out, cfg, min_images, detector)
    work = out / f"aligned-{aligned_label(detector)}"
    shutil.rmtree(work / "train", ignore_errors=True)
    train_recognition(cfg, rec, work / "train")
    shutil.copy2(work / "train" / "model.pt", work / "model.pt")
    found = evaluate_verification(work / "model.pt", lfw / "pairs-dev.txt", lfw / "images", work / "eval",
                                  detector_path=detector)
    result = {k.split(".", 1)[1]: v for k, v in found.items()}
    result.update(pack_images=packed["images_packed"], pack_aligned=packed.get("alignment.aligned"),
                  eval_faces=found["verification.alignment.aligned"] + found["verification.alignment.fallback"],
                  eval_aligned=found["verification.alignment.aligned"])
    return result


if __name__ == "__main__":
    sys.exit(main())
