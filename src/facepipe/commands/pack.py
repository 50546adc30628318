"""`facepipe pack SRC OUT`: identity folders or a .lst -> InsightFace RecordIO (rec/idx/lst/property)."""

from __future__ import annotations

from facepipe.commands.step_command import add_step_arguments, run_step_command

HELP = "pack face images (identity folders or a .lst) into an InsightFace RecordIO dataset"



def add_arguments(parser) -> None:
    add_step_arguments(parser, "pack", "OUT", "output folder: PREFIX.rec/.idx/.lst, property, pack_report.json",
                       flags=("prefix", "size", "workers", "quality", "min_images", "detector"))
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    import json

    report = run_step_command(args, "pack", quiet=args.quiet, progress=not args.quiet)
    summary = {k: report[k] for k in ("images_packed", "identities_packed", "images_passed_through",
                                      "skipped_count", "identities_dropped_count", "duplicate_files",
                                      "images_per_s", "workers")}
    print(json.dumps(summary))
    for item in report["skipped"][:10]:
        print(f"skipped {item['file']}: {item['reason']}")
    if report["skipped_count"] > 10:
        print(f"... {report['skipped_count'] - 10} more skipped files in {args.out}/pack_report.json")
    return 0
