"""`python -m pipeline.compile --out pipeline.yaml [--lock images/images.lock.json]`: write the pipeline spec.

Deterministic: the same code, configs and images lock give a byte-identical file (the tests
compare a fresh compile with the committed pipeline.yaml). A spec with a `{{$...}}` placeholder
inside a struct or list constant is refused: a KFP backend's launcher fills placeholders by plain
text replacement, so a value holding `"` or `\\` would break that JSON (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def compile_pipeline(out: str | Path, lock: str | Path | None = None) -> Path:
    from facepipe.errors import FacepipeError
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
    bad = placeholders_in_constants(out.read_text())
    if bad:
        out.unlink()
        raise FacepipeError(f"{out}: placeholders inside struct/list constants at {bad[:5]}; pass each value as "
                            f"its own typed input (components.component)")
    return out


def placeholders_in_constants(spec_text: str) -> list[str]:
    """Paths of struct/list constants (or defaults) that hold a `{{$...}}` placeholder."""
    import yaml

    found: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("constant", "defaultValue") and isinstance(value, (dict, list)) \
                        and "{{$" in json.dumps(value):
                    found.append(f"{path}.{key}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for i, doc in enumerate(yaml.safe_load_all(spec_text)):
        walk(doc, f"document{i}")
    return found


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
