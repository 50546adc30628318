"""`facepipe labels PATH`: check RetinaFace/WIDER label.txt files against their images; write a cleaned copy.

Also converts WIDER FACE's own `wider_face_*_bbx_gt.txt` (box-only) into label.txt with
`--format wider-gt --images WIDER_train/images --write-clean train/label.txt`.
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "check label.txt files (a file, a SPLIT folder, or a detection root with train/val/test)"

# Counts that mean the labels and the images disagree (the CLI exits 1 when any is non-zero).
PROBLEMS = ("images_missing", "images_unreadable", "boxes_clipped", "boxes_dropped_zero_area",
            "boxes_dropped_outside")


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="PATH",
                        help="label.txt, a split folder (label.txt + images/), or a folder of split folders")
    parser.add_argument("--images", help="images folder (default: images/ beside each label.txt)")
    parser.add_argument("--format", choices=["retinaface", "wider-gt"], default="retinaface",
                        help="retinaface: label.txt ('# path' + face lines); wider-gt: WIDER FACE's "
                             "wider_face_*_bbx_gt.txt (convert with --write-clean; needs --images)")
    parser.add_argument("--strict", action="store_true", help="stop at the first missing or unreadable image")
    parser.add_argument("--write-clean", metavar="LABEL_TXT",
                        help="write the usable labels (boxes clipped, zero-area boxes and missing images "
                             "dropped) to this file; only with a single label file")


def label_files(path: Path) -> list[Path]:
    from facepipe.errors import DataError

    if path.is_file():
        return [path]
    if (path / "label.txt").is_file():
        return [path / "label.txt"]
    found = sorted(p for p in path.glob("*/label.txt"))
    if not found:
        raise DataError("no label.txt here or in its sub-folders; expected SPLIT/label.txt + SPLIT/images/",
                        path=path)
    return found


def run(args) -> int:
    from facepipe.data.labels import read_labels, read_wider_gt, validate_labels, write_labels
    from facepipe.errors import ConfigError, DataError

    if args.format == "wider-gt" and not args.images:
        raise ConfigError("--format wider-gt needs --images (the WIDER_*/images folder)")
    read = read_wider_gt if args.format == "wider-gt" else read_labels
    files = [Path(args.path)] if args.format == "wider-gt" else label_files(Path(args.path))
    if args.write_clean and len(files) != 1:
        raise ConfigError(f"--write-clean needs a single label file; {args.path} holds {len(files)}")
    status = 0
    for label_txt in files:
        images_dir = Path(args.images) if args.images else label_txt.parent / "images"
        images = read(label_txt)
        if not images:
            raise DataError("lists no images (expected '# path' lines, each followed by its face lines)",
                            path=label_txt)
        kept, report = validate_labels(images, images_dir, strict=args.strict)
        print(json.dumps({"label_file": str(label_txt), **report}))
        if any(report[k] for k in PROBLEMS):
            status = 1
        if args.write_clean:
            write_labels(args.write_clean, kept)
    return status
