"""`facepipe storage cp|ls`: copy files and folders between local paths, s3:// and obs://, and list them."""

from __future__ import annotations

HELP = "copy (cp SRC DST) or list (ls URI) files and folders on local paths, s3:// and obs://"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    cp = sub.add_parser("cp", help="copy a file or folder; folders carry a manifest.json written last",
                        description="Copy SRC to DST (local path, file://, s3://BUCKET/KEY, obs://BUCKET/KEY). "
                                    "Folders are checksummed; a remote folder without its manifest.json "
                                    "(an unfinished upload) is refused.")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.add_argument("--workers", type=int, default=None, help="parallel file transfers (default 16)")
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    ls = sub.add_parser("ls", help="list a folder or prefix", description="List the files under URI.")
    ls.add_argument("uri")
    ls.add_argument("-r", "--recursive", action="store_true", help="list every file, not just the top level")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def run(args) -> int:
    import logging

    from facepipe import storage

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.storage_command == "ls":
        entries = storage.ls(args.uri, recursive=args.recursive)
        for e in entries:
            print(f"{_human(e.size):>10}  {e.name}")
        base = args.uri.rstrip("/").rsplit("/", 1)[-1]
        single_file = len(entries) == 1 and not entries[0].is_dir and entries[0].name == base
        if entries and not single_file and storage.MANIFEST not in {e.name for e in entries}:
            print(f"(no {storage.MANIFEST}: not a complete facepipe folder)")
        return 0

    src, dst = storage.parse_uri(args.src), storage.parse_uri(args.dst)
    if src.is_local:
        report = storage.upload(src.path, args.dst, workers=args.workers, quiet=args.quiet)
        print(f"{args.src} -> {args.dst}: {report.files} files copied, {report.skipped} unchanged, "
              f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s")
    elif dst.is_local:
        out = storage.download(args.src, dst.path, workers=args.workers, quiet=args.quiet)
        print(f"{args.src} -> {out}")
    else:
        with storage.localize(args.src, quiet=args.quiet) as local:
            storage.upload(local, args.dst, workers=args.workers, quiet=args.quiet)
        print(f"{args.src} -> {args.dst}")
    return 0
