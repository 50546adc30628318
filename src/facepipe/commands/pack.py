"""`facepipe pack SRC OUT`: identity folders or a .lst -> InsightFace RecordIO (rec/idx/lst/property)."""

from __future__ import annotations

HELP = "pack face images (identity folders or a .lst) into an InsightFace RecordIO dataset"

# flag -> PackConfig key; a flag given on the command line beats --config and --set.
_FLAGS = {"prefix": "prefix", "size": "size", "workers": "workers", "quality": "quality",
          "min_images": "min_images", "detector": "detector"}


def add_arguments(parser) -> None:
    parser.add_argument("src", help="identity-folder tree (SRC/<identity>/<image>) or a .lst file; "
                                    "a local path, s3:// or obs://")
    parser.add_argument("out", help="output folder: a local path, s3:// or obs:// (uploaded when complete)")
    parser.add_argument("--prefix", help="file name prefix (default train: train.rec, train.idx, train.lst)")
    parser.add_argument("--size", type=int, help="output images are SIZE x SIZE (default 112)")
    parser.add_argument("--workers", type=int, help="worker processes (default 0 = all cores)")
    parser.add_argument("--quality", type=int, help="JPEG quality 1-100 (default 95)")
    parser.add_argument("--min-images", type=int, dest="min_images",
                        help="drop identities with fewer usable images (default 1)")
    parser.add_argument("--detector", help="detector model.pt: align faces on landmarks instead of center-crop")
    parser.add_argument("--config", help="job YAML file (its 'pack' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    import json

    from facepipe.config import load_config, parse_sets
    from facepipe.data.pack import PackConfig
    from facepipe.edge import run_command

    sets = parse_sets(args.set)
    sets.update({key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None})
    cfg = load_config(PackConfig, args.config, sets, section="pack")
    report = run_command("pack", cfg, {"src": args.src}, args.out, quiet=args.quiet, progress=not args.quiet)
    summary = {k: report[k] for k in ("images_packed", "identities_packed", "images_passed_through",
                                      "skipped_count", "identities_dropped_count", "duplicate_files",
                                      "images_per_s", "workers")}
    print(json.dumps(summary))
    for item in report["skipped"][:10]:
        print(f"skipped {item['file']}: {item['reason']}")
    if report["skipped_count"] > 10:
        print(f"... {report['skipped_count'] - 10} more skipped files in {args.out}/pack_report.json")
    return 0
