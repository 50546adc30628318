"""Image build and push costs: a cold build+push, an unchanged rerun, and a rebuild after a code change.

Runs in a throw-away Docker engine and registry on 127.0.0.1 (images/sandbox.py) and prints image
sizes, times, and each case's time as a ratio of the cold run (the reference in this same script).
The layering promise it checks: after a code change only the small facepipe-wheel layer is rebuilt
and pushed. FACEPIPE_BASE_TAR=PATH reuses the base root file system (skips mmdebstrap).

    python bench/images.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from images.base import ensure_base  # noqa: E402
from images.build import build_images, summary  # noqa: E402
from images.sandbox import Sandbox, missing_tools  # noqa: E402


def timed(label: str, **kw):
    started = time.monotonic()
    outcomes = build_images(**kw)
    seconds = time.monotonic() - started
    print(f"\n--- {label}: {seconds:.0f} s\n{summary(outcomes)}\n", flush=True)
    return seconds, outcomes


def main() -> int:
    if missing := missing_tools():
        print(f"skipped: needs {', '.join(missing)} (scripts/install-system-deps.sh)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fp-bench-", dir="/tmp"))
    changed = tmp / "changed"
    try:
        box = Sandbox(tmp / "dock")
        with box:
            base_tar = os.environ.get("FACEPIPE_BASE_TAR")
            t = time.monotonic()
            ensure_base(tar=Path(base_tar) if base_tar else None, env=box.env)
            print(f"base image: {time.monotonic() - t:.0f} s", flush=True)
            common = dict(registry=f"{box.registry_host}/facepipe", lock_out=tmp / "lock.json", env=box.env)
            cold, outcomes = timed("cold build + push", **common)
            again, _ = timed("unchanged rerun", **common)
            # A one-line code change, made in a copy so the checkout stays untouched.
            shutil.copytree(ROOT / "src", changed / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            shutil.copy2(ROOT / "pyproject.toml", changed / "pyproject.toml")
            with open(changed / "src" / "facepipe" / "__init__.py", "a") as f:
                f.write("\n# bench: a code change\n")
            code, after = timed("rebuild + push after a code change", project=changed, **common)
        print("case                                 seconds   ratio to cold")
        for label, s in (("cold build + push", cold), ("unchanged rerun", again), ("after a code change", code)):
            print(f"{label:36} {s:7.0f}   {s / cold:6.2f}")
        for o in outcomes:
            print(f"{o.name}: {o.size / 1e6:.0f} MB")
        layer_push = {o.name: o.seconds.get("push", 0) for o in after}
        cold_push = {o.name: o.seconds.get("push", 0) for o in outcomes}
        for name in layer_push:
            if cold_push.get(name):
                print(f"{name}: push after a code change {layer_push[name]:.0f} s vs cold {cold_push[name]:.0f} s "
                      f"({layer_push[name] / cold_push[name]:.2f})")
    finally:
        box.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
