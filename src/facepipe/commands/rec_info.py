"""`facepipe rec-info PATH`: what a RecordIO dataset holds (counts, identities, image sizes, checks)."""

from __future__ import annotations

HELP = "describe a .rec dataset: images, identities, images per identity, image sizes"


def add_arguments(parser) -> None:
    parser.add_argument("path", help="a .rec file (with its .idx) or a folder holding .rec files")
    parser.add_argument("--sample", type=int, default=0,
                        help="read image sizes from this many images only (default 0 = all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--verify", action="store_true",
                        help="also check every file against the folder's manifest.json (sha256)")


def run(args) -> int:
    import json

    from facepipe.data.insightface import describe, find_rec

    recs = find_rec(args.path)
    if args.verify:
        from facepipe.manifest import read_manifest

        for folder in sorted({rec.parent for rec in recs}):
            read_manifest(folder, verify=True)  # DataError naming the file that does not match
    infos = [describe(rec, sample=args.sample) for rec in recs]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
        return 0
    for info in infos:
        print(f"{info['rec']}")
        print(f"  layout        {info['layout']}")
        print(f"  index         {info['index']}")
        print(f"  images        {info['images']}")
        print(f"  identities    {info['identities']}")
        per = info["images_per_identity"]
        print(f"  per identity  min {per['min']}  median {per['median']}  max {per['max']}")
        print(f"  property      {info['property'] or '(none)'}")
        sizes = ", ".join(f"{k} x{v}" for k, v in info["image_sizes"].items())
        print(f"  image sizes   {sizes}  ({info['images_checked']} images read)")
        print(f"  formats       {', '.join(f'{k} x{v}' for k, v in info['formats'].items())}")
        print(f"  file size     {info['rec_bytes']} bytes")
        if not info["verified"]:
            print("  manifest      NONE: not written by facepipe pack, contents unverified")
        elif args.verify:
            print("  manifest      every file matches its sha256")
    return 0
