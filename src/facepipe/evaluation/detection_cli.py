"""`facepipe evaluate detection --model M --data D --out OUT`: AP@0.5, easy/medium/hard, recall at FPPI, PR curve."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="detector model.pt")
    parser.add_argument("--data", required=True,
                        help="a label.txt, or a folder with SPLIT/label.txt (or label.txt) and images/")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, pr_curve.png, detections.json)")
    parser.add_argument("--split", default="test", help="split folder to use when --data has several (default test)")
    parser.add_argument("--score-threshold", type=float, default=0.02)
    parser.add_argument("--nms-threshold", type=float, default=0.4)
    parser.add_argument("--scales", default="1.0", help="comma-separated test scales, e.g. 0.5,1,1.5")
    parser.add_argument("--max-images", type=int, default=0, help="score only the first N images (0 = all)")
    parser.add_argument("--device", default="cpu")


def run(args) -> int:
    import json

    from facepipe.detection.evaluate import evaluate_detection
    from facepipe.errors import ConfigError

    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--scales {args.scales!r}: expected comma-separated numbers") from None
    metrics = evaluate_detection(args.model, args.data, args.out, args.score_threshold, args.nms_threshold,
                                 scales, split=args.split, max_images=args.max_images, device=args.device)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1))
    return 0
