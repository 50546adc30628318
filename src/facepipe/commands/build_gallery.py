"""`facepipe build-gallery DATA_PATH DETECT_MODEL_PATH RECOGNIZE_MODEL_PATH DB_OUTPUT_PATH`: enrol identity folders."""

from __future__ import annotations

from facepipe.commands.step_command import add_step_arguments, run_step_command

HELP = "enrol identity folders (DATA/<identity>/<image>) into a searchable face gallery"


def add_arguments(parser) -> None:
    add_step_arguments(parser, "build_gallery", "DB_OUTPUT_PATH", "gallery folder to write (replaced atomically)",
                       flags=("template", "index", "dtype", "target_far", "calibration_dir"))


def run(args) -> int:
    from facepipe.gallery.build import summary_lines

    report = run_step_command(args, "build_gallery")
    for line in summary_lines(report):
        print(line)
    print(f"gallery written to {args.out} (report: build_report.json)")
    return 0
