"""`facepipe label-faces SRC OUT`: label a folder of the user's own photos with a teacher detector.

`--teacher haar` (default): OpenCV's Haar cascade, boxes only (landmarks -1, so the landmark loss
skips them). `--teacher mtcnn`: MTCNN (weights shipped in the facenet-pytorch wheel), boxes and 5
landmarks. Writes the RetinaFace layout train-detection reads: OUT/images/ (copies, same relative
paths), OUT/label.txt, OUT/manifest.json last.
`--lfw-geometry` is for LFW-style 250x250 crops: their centred main face is labelled even where the
cascade misses it. These are the labels facepipe's own real-photo detector training uses.
"""

from __future__ import annotations

HELP = "label your own photos with a teacher detector (Haar cascade or MTCNN) into OUT/images + OUT/label.txt"


def add_arguments(parser) -> None:
    from facepipe.data.teacher import TeacherConfig

    defaults = TeacherConfig()
    parser.add_argument("src", metavar="SRC", help="folder of photos (searched recursively)")
    parser.add_argument("out", metavar="OUT", help="output folder (replaced only when complete)")
    parser.add_argument("--teacher", choices=["haar", "mtcnn"], default=defaults.teacher,
                        help="haar: boxes only; mtcnn: boxes and 5 landmarks")
    parser.add_argument("--min-score", type=float, default=defaults.min_score,
                        help="mtcnn: score a face needs to become a label")
    parser.add_argument("--min-neighbors", type=int, default=defaults.min_neighbors,
                        help="merged cascade hits a box needs to become a label (higher: fewer, surer faces)")
    parser.add_argument("--min-size", type=int, default=defaults.min_size,
                        help="smallest face side searched (px)")
    parser.add_argument("--lfw-geometry", action="store_true",
                        help="photos are LFW-style crops: label the centred main face from the crop geometry")


def run(args) -> int:
    import json

    from facepipe.config import from_dict
    from facepipe.data.teacher import TeacherConfig, label_photos

    cfg = from_dict(TeacherConfig, {"teacher": args.teacher, "min_score": args.min_score,
                                    "min_neighbors": args.min_neighbors, "min_size": args.min_size,
                                    "lfw_geometry": args.lfw_geometry}, source="label-faces flags")
    report = label_photos(args.src, args.out, cfg)
    print(json.dumps({k: v for k, v in report.items() if k != "unreadable"} | {"unreadable": len(report["unreadable"])}))
    return 0
