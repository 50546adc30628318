"""`python -m pipeline.compile --out pipeline.yaml [--lock images/images.lock.json]`: write the pipeline spec.

Deterministic: the same code, configs and images lock give a byte-identical file (the tests
compare a fresh compile with the committed pipeline.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def compile_pipeline(out: str | Path, lock: str | Path | None = None) -> Path:
    from facepipe.orchestration import images

    if lock:
        os.environ[images.LOCK_ENV] = str(lock)
    if os.environ.get(images.UNPINNED_ENV) != "1":
        images.read_lock()  # fails with how to make it when the lock is missing
    from kfp import compiler

    from pipeline.pipeline import build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(), str(out))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pipeline.yaml", help="where to write the spec (default: pipeline.yaml)")
    parser.add_argument("--lock", help="images lock to pin base images from (default: images/images.lock.json)")
    args = parser.parse_args(argv)
    from facepipe.errors import FacepipeError

    try:
        print(compile_pipeline(args.out, args.lock))
    except FacepipeError as exc:
        print(f"pipeline.compile: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
