"""`facepipe recognize DATA_PATH DB_PATH DETECT_MODEL_PATH RECOGNIZE_MODEL_PATH [--out OUT]`: name every face."""

from __future__ import annotations

HELP = "recognize every face in photos against a gallery (results.json/.csv, annotated images)"


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="an image or a folder of images (searched recursively); this and "
                                          "every path below: local, file://, s3:// or obs://")
    parser.add_argument("db_path", help="gallery folder from `facepipe build-gallery`")
    parser.add_argument("detect_model_path", help="detector model.pt or its folder, or 'none' (whole image "
                                                  "as one face)")
    parser.add_argument("recognize_model_path", help="recognizer model.pt or its folder (the one the gallery "
                                                     "was built with)")
    parser.add_argument("--out", default="recognition_out", help="output folder (default ./recognition_out; "
                                                                 "a URI is published when complete)")
    parser.add_argument("--top-k", type=int, dest="top_k", help="identities listed per face (default 5)")
    parser.add_argument("--threshold", type=float,
                        help="similarity for a named match (default: the gallery's calibrated threshold)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="faces per forward pass (default 64)")
    parser.add_argument("--no-annotate", action="store_true", help="skip the annotated images")
    parser.add_argument("--config", help="job YAML file (its 'recognize' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")


def run(args) -> int:
    import json
    from pathlib import PurePosixPath

    from facepipe.config import load_config, parse_sets
    from facepipe.edge import run_command
    from facepipe.gallery.recognize import RecognizeConfig

    sets = parse_sets(args.set)
    for key in ("top_k", "threshold", "batch_size"):
        if getattr(args, key) is not None:
            sets[key] = getattr(args, key)
    if args.no_annotate:
        sets["annotate"] = False
    cfg = load_config(RecognizeConfig, args.config, sets, section="recognize")
    inputs = {"data_dir": args.data_path, "gallery_dir": args.db_path, "detector_path": args.detect_model_path,
              "recognizer_path": args.recognize_model_path}
    summary = run_command("recognize", cfg, inputs, args.out, run_name=args.run_name or PurePosixPath(args.out).name)
    brief = {k: summary[k] for k in ("images", "faces", "recognized", "unknown", "threshold")}
    print(json.dumps(brief))
    if summary["images_without_faces"]:
        print(f"{len(summary['images_without_faces'])} images without a detected face, e.g. "
              f"{summary['images_without_faces'][:3]}")
    print(f"results: {args.out.rstrip('/')}/results.json, {args.out.rstrip('/')}/results.csv")
    return 0
