"""`facepipe recognize DATA_PATH DB_PATH DETECT_MODEL_PATH RECOGNIZE_MODEL_PATH [--out OUT]`: name every face."""

from __future__ import annotations

from facepipe.commands.step_command import add_step_arguments, run_step_command

HELP = "recognize every face in photos against a gallery (results.json/.csv, annotated images)"


def add_arguments(parser) -> None:
    add_step_arguments(parser, "recognize", None, "output folder: results.json, results.csv, annotated images",
                       flags=("top_k", "threshold", "batch_size", "annotate"))


def run(args) -> int:
    import json

    summary = run_step_command(args, "recognize")
    brief = {k: summary[k] for k in ("images", "faces", "recognized", "unknown", "threshold")}
    print(json.dumps(brief))
    if summary["images_without_faces"]:
        print(f"{len(summary['images_without_faces'])} images without a detected face, e.g. "
              f"{summary['images_without_faces'][:3]}")
    print(f"results: {args.out.rstrip('/')}/results.json, {args.out.rstrip('/')}/results.csv")
    return 0
