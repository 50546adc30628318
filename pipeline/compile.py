"""`python -m pipeline.compile --out pipeline.yaml [--lock images/images.lock.json]`: write the pipeline spec.

Options for the cluster: `--image-pull-secret NAME` (env FACEPIPE_IMAGE_PULL_SECRET, default
swr-pull, "" for none), `--gpu-node-selector KEY=VALUE` and `--gpu-toleration KEY[:EFFECT]` (GPU
tasks only), and `--allow-cpu-torch-on-gpu`: without it, a step that asks for a GPU
while its pinned image holds CPU torch (the images lock's `torch_variant`) is refused, since it
would hold a GPU and train on CPU.

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


def compile_pipeline(out: str | Path, lock: str | Path | None = None, *, pull_secret: str | None = None,
                     allow_cpu_torch_on_gpu: bool = False, gpu_node_selector: tuple = (),
                     gpu_tolerations: tuple = ()) -> Path:
    from facepipe.errors import FacepipeError
    from facepipe.orchestration import images

    if lock:
        os.environ[images.LOCK_ENV] = str(lock)
    if os.environ.get(images.UNPINNED_ENV) != "1" or images.lock_path().exists():
        # fails with how to make it when the lock is missing
        check_gpu_images(images.read_lock(), images.lock_path(), allow_cpu_torch_on_gpu)
    from kfp import compiler

    from pipeline.pipeline import ClusterOptions, build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = ClusterOptions.from_env(pull_secret=pull_secret, allow_cpu_torch_on_gpu=allow_cpu_torch_on_gpu,
                                      gpu_node_selector=tuple(gpu_node_selector),
                                      gpu_tolerations=tuple(gpu_tolerations))
    compiler.Compiler().compile(build_pipeline(options), str(out))
    bad = placeholders_in_constants(out.read_text())
    if bad:
        out.unlink()
        raise FacepipeError(f"{out}: placeholders inside struct/list constants at {bad[:5]}; pass each value as "
                            f"its own typed input (components.component)")
    return out


def check_gpu_images(lock: dict, lock_file: Path, allow_cpu_torch: bool) -> None:
    """Refuse GPU steps whose pinned image has CPU torch (or does not say which), unless allowed."""
    from facepipe.errors import ConfigError
    from facepipe.orchestration.images import torch_variant
    from facepipe.steps import PIPELINE_STEPS, STEPS

    if allow_cpu_torch:
        return
    bad = {}
    for name in PIPELINE_STEPS:
        step = STEPS[name]
        variant = torch_variant(step.image, lock)
        if step.resources.gpus and variant != "cuda":
            bad[name] = f"{step.image} has torch_variant {variant or '(not recorded)'}"
    if bad:
        listed = "; ".join(f"{k} ({v})" for k, v in bad.items())
        raise ConfigError(f"{lock_file}: steps that ask for a GPU run in an image without CUDA torch: {listed}. "
                          f"Build the CUDA image (`make push-images TORCH_VARIANT=cuda`), or pass "
                          f"--allow-cpu-torch-on-gpu to run them on CPU while holding the GPU")


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


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _pair(text: str, sep: str, flag: str, default: str = "", allowed: tuple[str, ...] = ()) -> tuple[str, str]:
    """`KEY<sep>VALUE` from a repeatable flag; a clear error naming the flag otherwise."""
    from facepipe.errors import ConfigError

    key, found, value = text.partition(sep)
    value = value if found else default
    if not key or not value or (allowed and value not in allowed):
        raise ConfigError(f"{flag} {text!r}: expected KEY{sep}VALUE" +
                          (f" with VALUE one of {', '.join(allowed)}" if allowed else ""))
    return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pipeline.yaml", help="where to write the spec (default: pipeline.yaml)")
    parser.add_argument("--lock", help="images lock to pin base images from (default: images/images.lock.json)")
    parser.add_argument("--image-pull-secret", default=None, metavar="NAME",
                        help="Kubernetes secret every task pulls its image with (env FACEPIPE_IMAGE_PULL_SECRET, "
                             "default swr-pull; '' for none)")
    parser.add_argument("--allow-cpu-torch-on-gpu", action="store_true",
                        help="compile even where a GPU step's image has CPU torch (it then runs on CPU)")
    parser.add_argument("--gpu-node-selector", action="append", default=[], metavar="KEY=VALUE",
                        help="GPU tasks run only on nodes with this label (repeatable), "
                             "e.g. node.kubernetes.io/instance-type=p2s.2xlarge.8")
    parser.add_argument("--gpu-toleration", action="append", default=[], metavar="KEY[:EFFECT]",
                        help="GPU tasks tolerate this taint (repeatable; effect NoSchedule unless given), "
                             "e.g. nvidia.com/gpu")
    args = parser.parse_args(argv)
    from facepipe.errors import FacepipeError

    try:
        print(compile_pipeline(args.out, args.lock, pull_secret=args.image_pull_secret,
                               allow_cpu_torch_on_gpu=args.allow_cpu_torch_on_gpu,
                               gpu_node_selector=[_pair(s, "=", "--gpu-node-selector") for s in args.gpu_node_selector],
                               gpu_tolerations=[_pair(s, ":", "--gpu-toleration", "NoSchedule", TAINT_EFFECTS)
                                                for s in args.gpu_toleration]))
    except FacepipeError as exc:
        print(f"pipeline.compile: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
