"""`facepipe unpack REC OUT`: a RecordIO dataset back to identity folders (OUT/<identity>/<image>)."""

from __future__ import annotations

HELP = "write the images of a .rec back out as identity folders"


def add_arguments(parser) -> None:
    parser.add_argument("rec", help="a .rec file (with its .idx) or a folder holding one")
    parser.add_argument("out", help="output folder: OUT/<identity>/<image>.jpg")
    parser.add_argument("--names", choices=["auto", "lst", "class"], default="auto",
                        help="folder/file names from the .lst next to the .rec (lst), or class ids "
                             "and record keys (class); auto uses the .lst when it matches")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    import json

    from facepipe.data.insightface import unpack

    result = unpack(args.rec, args.out, names=args.names, progress=not args.quiet)
    print(json.dumps(result))
    return 0
