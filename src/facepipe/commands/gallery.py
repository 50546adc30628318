"""`facepipe gallery add|remove|info`: edit or inspect a gallery without rebuilding it."""

from __future__ import annotations

HELP = "add or remove gallery identities without a rebuild, or show what a gallery holds"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="enrol more identity folders (DATA/<identity>/<image>)")
    add.add_argument("gallery", help="gallery folder")
    add.add_argument("data_path", help="identity folders to enrol")
    add.add_argument("recognize_model_path", help="recognizer model.pt (must be the gallery's)")
    add.add_argument("--detector", help="detector model.pt (default: center-crop, flagged)")
    add.add_argument("--replace", action="store_true", help="re-enrol identities that are already in the gallery")
    rm = sub.add_parser("remove", help="drop identities by name")
    rm.add_argument("gallery", help="gallery folder")
    rm.add_argument("names", nargs="+", help="identity names")
    info = sub.add_parser("info", help="counts, digests, threshold and build problems")
    info.add_argument("gallery", help="gallery folder")
    info.add_argument("--list", action="store_true", help="also list every enrolled name")


def run(args) -> int:
    import json

    from facepipe.gallery.edit import add_identities, remove_identities
    from facepipe.gallery.store import gallery_info

    if args.action == "add":
        from facepipe.edge import given

        result = add_identities(args.gallery, args.data_path, args.recognize_model_path,
                                given(args.detector), replace=args.replace)
        print(f"added {len(result['identities'])} identities; gallery now has {result['num_identities']}; "
              f"threshold {result['threshold_before']} -> {result['threshold']}")
        for key, items in result["problems"].items():
            if items:
                print(f"{key}: {len(items)} {items[:5]}")
    elif args.action == "remove":
        result = remove_identities(args.gallery, args.names)
        print(f"removed {len(result['identities'])} identities; gallery now has {result['num_identities']}; "
              f"threshold {result['threshold_before']} -> {result['threshold']}")
    else:
        info = gallery_info(args.gallery)
        if not args.list:
            info.pop("names")
        print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0
