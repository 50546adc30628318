"""`facepipe detect --model MODEL IMAGES... --out OUT`: faces (box, score, 5 landmarks) in images.

Writes OUT/detections.json (`{image_name: [[x1, y1, x2, y2, score, lx1, ly1, ..., lx5, ly5], ...]}`),
OUT/annotated/<image_name> with the faces drawn, and OUT/manifest.json last. IMAGES may be files or
folders (searched recursively for .jpg/.jpeg/.png/.bmp/.webp). MODEL, IMAGES and OUT may be local
paths or file://, s3://, obs:// URIs (an OUT URI is published when complete).
"""

from __future__ import annotations

HELP = "detect faces with a trained detector; writes detections.json and annotated images"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="detector model.pt or its folder (from train-detection)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--nms-threshold", type=float, default=0.4)
    parser.add_argument("--scales", default="1.0",
                        help="comma-separated resize factors; more than one = multi-scale (e.g. 0.5,1,2)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-annotate", action="store_true", help="write only detections.json")


def collect_images(inputs: list[str]):
    """(name, path) pairs; a folder's images are named by their path relative to it."""
    from pathlib import Path

    from facepipe.errors import DataError

    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", path=p)
            found += [(f.relative_to(p).as_posix(), f) for f in files]
        elif p.is_file():
            found.append((p.name, p))
        else:
            raise DataError("no such image file or folder", path=p)
    names = [n for n, _ in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"two inputs share the image name(s) {dupes[:5]}; pass their folder instead")
    return found


def run(args) -> int:
    import contextlib
    import json
    from pathlib import Path

    import cv2

    from facepipe import storage
    from facepipe.detection.data import read_image
    from facepipe.detection.infer import Detector, draw_detections
    from facepipe.edge import fetch
    from facepipe.errors import ConfigError
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--scales {args.scales!r}: expected comma-separated numbers like 0.5,1,2") from None
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales {args.scales!r}: expected positive numbers")
    results, faces = {}, 0
    with contextlib.ExitStack() as stack:
        images = collect_images([fetch(stack, item) for item in args.images])
        detector = Detector.load(fetch(stack, args.model, "model.pt"), device=args.device)
        out = Path(stack.enter_context(storage.output_dir(args.out)))
        (out / "annotated").mkdir(parents=True, exist_ok=True)
        with Progress(len(images), "detecting", unit="img") as progress:
            for start in range(0, len(images), max(1, args.batch_size)):
                chunk = images[start:start + max(1, args.batch_size)]
                pixels = [read_image(path) for _, path in chunk]
                for (name, _), image, dets in zip(chunk, pixels, detector.detect_batch(
                        pixels, args.score_threshold, args.nms_threshold, scales)):
                    results[name] = [[round(float(v), 2) for v in row] for row in dets]
                    faces += len(dets)
                    if not args.no_annotate:
                        target = out / "annotated" / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(target.with_suffix(".jpg")), draw_detections(image, dets))
                progress.update(len(chunk))
        # One image per line: readable and still plain JSON.
        body = ",\n".join(f" {json.dumps(name)}: {json.dumps(rows)}" for name, rows in results.items())
        (out / "detections.json").write_text("{\n" + body + "\n}\n")
        write_manifest(out, kind="detections", extra={"model_sha256": detector.digest, "images": len(results),
                                                      "faces": faces})
    print(f"{faces} face(s) in {len(results)} image(s) -> {args.out.rstrip('/')}/detections.json")
    return 0
