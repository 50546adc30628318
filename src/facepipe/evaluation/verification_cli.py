"""`facepipe evaluate verification --model M --pairs P --images DIR --out OUT`: LFW-protocol verification."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.description = ("verification by the LFW protocol: 10-fold accuracy, AUC, TAR at FAR 1e-2/1e-3; "
                          "writes OUT/metrics.json, OUT/scores.csv, OUT/roc.png, OUT/det.png")
    parser.add_argument("--model", required=True, help="recognizer model.pt")
    parser.add_argument("--pairs", required=True, help="LFW pairs.txt or InsightFace .bin")
    parser.add_argument("--images", help="image folder of pairs.txt (IMAGES/name/name_0001.jpg; "
                                         "default: 'images' beside the pairs file)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--detector", help="detector model.pt: detect and align each face first")
    parser.add_argument("--center-crop", type=float, dest="center_crop",
                        help="without --detector: share of the image's shorter side kept around its centre "
                             "(default: the value the recognizer was trained with)")


def run(args) -> int:
    import json

    from facepipe.errors import ConfigError
    from facepipe.evaluation.verification_step import evaluate_verification

    if args.center_crop is not None and not 0.1 <= args.center_crop <= 1.0:
        raise ConfigError(f"--center-crop {args.center_crop}: expected a share between 0.1 and 1")
    metrics = evaluate_verification(args.model, args.pairs, args.images, args.out, args.detector,
                                    center_crop=args.center_crop)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
