"""A node-local cache of remote input folders, keyed by their manifest digest: the ranks of a node fetch a `.rec` once.

Under torchrun (a TrainJob node, a ModelArts node) every rank runs the step command and localizes its
inputs itself, so without a shared copy the N ranks of a node download the same data N times. Here
the first rank to take the entry's lock downloads into `DIGEST.partial-PID` and renames it to
`DIGEST` when every file is verified; the others wait on the lock and find the entry complete.
A complete entry is immutable (the digest is that of its files' sha256s), so it is also reused by
the next job on the same data; a crashed download leaves only a `.partial-*` folder, removed by the
next rank that takes the lock.

    FACEPIPE_CACHE_DIR   where entries live; unset: a cache is used only when torchrun starts more
                         than one rank on this node (LOCAL_WORLD_SIZE > 1), in the temp folder
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from facepipe.errors import DataError
from facepipe.manifest import MANIFEST, files_digest
from facepipe.secrets import redact
from facepipe.storage.backend import log
from facepipe.storage.transfer import TransferReport, _download_folder, _read_manifest_bytes, _workers, backend_for
from facepipe.storage.uri import Location


def cache_dir() -> Path | None:
    """The node cache's folder, or None where inputs go to a private temp folder per process."""
    if os.environ.get("FACEPIPE_CACHE_DIR"):
        return Path(os.environ["FACEPIPE_CACHE_DIR"])
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        return Path(tempfile.gettempdir()) / f"facepipe-cache-{os.getuid()}"
    return None


@contextlib.contextmanager
def _locked(path: Path):
    # flock, not a marker file: the kernel drops it when its holder dies, so a killed rank never
    # leaves the others waiting forever
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_folder(src: Location, root: Path, quiet: bool = False) -> tuple[Path, TransferReport]:
    """The local copy of the remote folder `src` under `root` (downloaded unless there already);
    the report says what this call fetched (nothing when another process or job had)."""
    be = backend_for(src)
    raw = _read_manifest_bytes(be, src.child(MANIFEST), src)
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a facepipe manifest: {exc}", path=str(src.child(MANIFEST))) from None
    digest = files_digest(files)
    entry = root / digest
    if (entry / MANIFEST).is_file():
        return entry, TransferReport(skipped=len(files))
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{digest}.lock"):
        if (entry / MANIFEST).is_file():  # another rank finished it while this one waited
            return entry, TransferReport(skipped=len(files))
        for stale in root.glob(f"{digest}.partial-*"):  # the lock is held: nobody else writes these
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)  # only an entry someone emptied by hand gets here
        partial = root / f"{digest}.partial-{os.getpid()}"
        report = _download_folder(be, src, partial, _workers(), quiet, raw=raw)
        os.replace(partial, entry)
    log.info(redact(f"cached {src} as {entry}: {report.files} files, {report.bytes / 1e6:.1f} MB"))
    return entry, report
