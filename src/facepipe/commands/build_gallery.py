"""`facepipe build-gallery DATA_PATH DETECT_MODEL_PATH RECOGNIZE_MODEL_PATH DB_OUTPUT_PATH`: enrol identity folders."""

from __future__ import annotations

HELP = "enrol identity folders (DATA/<identity>/<image>) into a searchable face gallery"


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="identity folders: DATA_PATH/<identity>/<image>.jpg")
    parser.add_argument("detect_model_path", help="detector model.pt, or 'none' to center-crop (flagged)")
    parser.add_argument("recognize_model_path", help="recognizer model.pt")
    parser.add_argument("db_output_path", help="gallery folder to write (replaced atomically)")
    parser.add_argument("--template", choices=["mean", "all"], help="one mean per identity (default) or every image")
    parser.add_argument("--index", choices=["flat", "ivf", "hnsw"], help="search index (default flat: exact)")
    parser.add_argument("--dtype", choices=["float32", "float16"], help="stored embedding precision")
    parser.add_argument("--target-far", type=float, dest="target_far",
                        help="open-set false alarm rate for the unknown threshold (default 0.01)")
    parser.add_argument("--calibration-dir", dest="calibration_dir",
                        help="identity folders of people NOT enrolled, to calibrate the threshold on")
    parser.add_argument("--config", help="job YAML file (its 'build_gallery' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")


def optional_model(path: str | None) -> str | None:
    """'none' / '' on the command line means: no detector, center-crop (flagged in the output)."""
    return None if path is None or path.strip().lower() in ("", "none", "-") else path


def run(args) -> int:
    from pathlib import Path

    from facepipe.config import load_config, parse_sets
    from facepipe.gallery.build import GalleryConfig, build_gallery, summary_lines
    from facepipe.tracking import command_logger

    sets = parse_sets(args.set)
    for key in ("template", "index", "dtype", "target_far", "calibration_dir"):
        if getattr(args, key) is not None:
            sets[key] = getattr(args, key)
    cfg = load_config(GalleryConfig, args.config, sets, section="build_gallery")
    detector = optional_model(args.detect_model_path)
    with command_logger(args.run_name or Path(args.db_output_path).name,
                        {"facepipe.step": "build_gallery", "data_path": args.data_path}) as logger:
        report = build_gallery(cfg, args.data_path, detector, args.recognize_model_path,
                               args.db_output_path, logger=logger)
    for line in summary_lines(report):
        print(line)
    print(f"gallery written to {args.db_output_path} (report: build_report.json)")
    return 0
