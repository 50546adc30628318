"""`facepipe evaluate identification --model REC --gallery-dir G --probe-dir P [--distractor-dir D] --out OUT`."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.description = ("1:N identification: closed-set rank-1/rank-5 and the CMC curve, open-set DIR at "
                          "FAR 1e-2 with distractors; writes OUT/metrics.json, OUT/probes.csv, OUT/cmc.png, "
                          "OUT/dir_far.png")
    parser.add_argument("--model", required=True, help="recognizer model.pt")
    parser.add_argument("--gallery-dir", required=True, dest="gallery_dir",
                        help="enrolment identity folders (G/<identity>/<image>), or a built gallery folder")
    parser.add_argument("--probe-dir", required=True, dest="probe_dir",
                        help="probe identity folders; identities not in the gallery count as distractors")
    parser.add_argument("--distractor-dir", dest="distractor_dir",
                        help="identity folders of people NOT enrolled (open-set non-mated searches)")
    parser.add_argument("--detector", help="detector model.pt: detect and align each face (default: center crop)")
    parser.add_argument("--center-crop", type=float, dest="center_crop",
                        help="without --detector: share of the shorter side kept (default: the recognizer's)")
    parser.add_argument("--batch-size", type=int, default=64, dest="batch_size")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import json

    from facepipe.errors import ConfigError
    from facepipe.evaluation.identification import evaluate_identification

    if args.center_crop is not None and not 0.05 <= args.center_crop <= 1.0:
        raise ConfigError(f"--center-crop {args.center_crop}: expected a share between 0.05 and 1")
    metrics = evaluate_identification(args.model, args.gallery_dir, args.probe_dir, args.out,
                                      distractor_dir=args.distractor_dir, detector_path=args.detector,
                                      batch_size=args.batch_size, crop_fraction=args.center_crop)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
