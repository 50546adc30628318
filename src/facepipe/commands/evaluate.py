"""`facepipe evaluate KIND ...`: verification, identification or detection; writes OUT/metrics.json + PNG plots.

Every path may be local or a file://, s3://, obs:// URI; an OUT URI is published when complete.
"""

from __future__ import annotations

import contextlib
import json

from facepipe.errors import ConfigError

HELP = "evaluate a recognizer (verification, identification) or a detector (detection)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (add, _) in KINDS.items():
        add(sub.add_parser(kind))


def run(args) -> int:
    from facepipe import storage

    with contextlib.ExitStack() as stack:
        metrics = KINDS[args.kind][1](args, stack, str(stack.enter_context(storage.output_dir(args.out))))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _local(stack, uri: str | None, model_file: str = "") -> str | None:
    from facepipe.edge import fetch, given

    return given(uri) and fetch(stack, uri, model_file)


def _add_verification(parser) -> None:
    parser.description = ("verification by the LFW protocol: 10-fold accuracy, AUC, TAR at FAR 1e-2/1e-3; "
                          "writes OUT/metrics.json, OUT/scores.csv, OUT/roc.png, OUT/det.png")
    parser.add_argument("--model", required=True, help="recognizer model.pt or its folder")
    parser.add_argument("--pairs", required=True, help="LFW pairs.txt or InsightFace .bin")
    parser.add_argument("--images", help="image folder of pairs.txt (IMAGES/name/name_0001.jpg; "
                                         "default: 'images' beside the pairs file)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--detector", help="detector model.pt: detect and align each face first")
    parser.add_argument("--center-crop", type=float, dest="center_crop",
                        help="without --detector: share of the image's shorter side kept around its centre "
                             "(default: the value the recognizer was trained with)")


def _verification(args, stack, out: str) -> dict:
    from facepipe.evaluation.verification_step import evaluate_verification

    if args.center_crop is not None and not 0.1 <= args.center_crop <= 1.0:
        raise ConfigError(f"--center-crop {args.center_crop}: expected a share between 0.1 and 1")
    images = args.images
    if images is None and args.pairs.startswith(("s3://", "obs://")) and not args.pairs.endswith(".bin"):
        images = args.pairs.rsplit("/", 1)[0] + "/images"  # the default, found beside the remote pairs file
    return evaluate_verification(_local(stack, args.model, "model.pt"), _local(stack, args.pairs),
                                 _local(stack, images), out, _local(stack, args.detector, "model.pt"),
                                 center_crop=args.center_crop)


def _add_identification(parser) -> None:
    parser.description = ("1:N identification: closed-set rank-1/rank-5 and the CMC curve, open-set DIR at "
                          "FAR 1e-2 with distractors; writes OUT/metrics.json, OUT/probes.csv, OUT/cmc.png, "
                          "OUT/dir_far.png")
    parser.add_argument("--model", required=True, help="recognizer model.pt or its folder")
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


def _identification(args, stack, out: str) -> dict:
    from facepipe.evaluation.identification import evaluate_identification

    if args.center_crop is not None and not 0.05 <= args.center_crop <= 1.0:
        raise ConfigError(f"--center-crop {args.center_crop}: expected a share between 0.05 and 1")
    return evaluate_identification(_local(stack, args.model, "model.pt"), _local(stack, args.gallery_dir),
                                   _local(stack, args.probe_dir), out,
                                   distractor_dir=_local(stack, args.distractor_dir),
                                   detector_path=_local(stack, args.detector, "model.pt"),
                                   batch_size=args.batch_size, center_crop=args.center_crop)


def _add_detection(parser) -> None:
    parser.add_argument("--model", required=True, help="detector model.pt or its folder")
    parser.add_argument("--data", required=True,
                        help="a label.txt, or a folder with SPLIT/label.txt (or label.txt) and images/")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, pr_curve.png, detections.json)")
    parser.add_argument("--split", default="test", help="split folder to use when --data has several (default test)")
    parser.add_argument("--score-threshold", type=float, default=0.02)
    parser.add_argument("--nms-threshold", type=float, default=0.4)
    parser.add_argument("--scales", default="1.0", help="comma-separated test scales, e.g. 0.5,1,1.5")
    parser.add_argument("--max-images", type=int, default=0, help="score only the first N images (0 = all)")
    parser.add_argument("--device", default="cpu")


def _detection(args, stack, out: str) -> dict:
    from facepipe.detection.evaluate import evaluate_detection

    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--scales {args.scales!r}: expected comma-separated numbers") from None
    metrics = evaluate_detection(_local(stack, args.model, "model.pt"), _local(stack, args.data), out,
                                 args.score_threshold, args.nms_threshold, scales, split=args.split,
                                 max_images=args.max_images, device=args.device)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# kind -> (add its arguments, run it into a local OUT folder: returns the metrics printed)
KINDS = {"verification": (_add_verification, _verification),
         "identification": (_add_identification, _identification),
         "detection": (_add_detection, _detection)}
