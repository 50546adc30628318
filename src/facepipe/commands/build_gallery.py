"""`facepipe build-gallery DATA_PATH DETECT_MODEL_PATH RECOGNIZE_MODEL_PATH DB_OUTPUT_PATH`: enrol identity folders."""

from __future__ import annotations

HELP = "enrol identity folders (DATA/<identity>/<image>) into a searchable face gallery"


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="identity folders: DATA_PATH/<identity>/<image>.jpg; "
                                          "this and every path below: local, file://, s3:// or obs://")
    parser.add_argument("detect_model_path", help="detector model.pt or its folder, or 'none' to center-crop "
                                                  "(flagged)")
    parser.add_argument("recognize_model_path", help="recognizer model.pt or its folder")
    parser.add_argument("db_output_path", help="gallery folder to write (replaced atomically; a URI is "
                                               "published when complete)")
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


def run(args) -> int:
    from pathlib import PurePosixPath

    from facepipe.config import load_config, parse_sets
    from facepipe.edge import run_command
    from facepipe.gallery.build import GalleryConfig, summary_lines

    sets = parse_sets(args.set)
    for key in ("template", "index", "dtype", "target_far", "calibration_dir"):
        if getattr(args, key) is not None:
            sets[key] = getattr(args, key)
    cfg = load_config(GalleryConfig, args.config, sets, section="build_gallery")
    inputs = {"data_dir": args.data_path, "detector_path": args.detect_model_path,
              "recognizer_path": args.recognize_model_path}
    report = run_command("build_gallery", cfg, inputs, args.db_output_path,
                         run_name=args.run_name or PurePosixPath(args.db_output_path).name)
    for line in summary_lines(report):
        print(line)
    print(f"gallery written to {args.db_output_path} (report: build_report.json)")
    return 0
