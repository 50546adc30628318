"""`facepipe synth OUT`: draw the synthetic dataset (identity folders, detection scenes, pairs) into OUT."""

from __future__ import annotations

import json

HELP = "draw synthetic faces: identity folders for recognition, labelled scenes for detection"

# Flags that are shortcuts for `--set key=value` (they win over the config file and --set).
_FLAGS = {"identities": int, "images": int, "scenes": int, "seed": int, "workers": int}


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (created; an earlier synth output is replaced)")
    parser.add_argument("--identities", type=int, help="identities in faces/ (default 50)")
    parser.add_argument("--images", type=int, help="images per identity (default 20)")
    parser.add_argument("--scenes", type=int, help="detection scenes over train/val/test (default 100)")
    parser.add_argument("--seed", type=int, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--workers", type=int, help="processes (default 1; output does not depend on it)")
    parser.add_argument("--config", help="YAML job file; its `synth:` section (or the whole file) is read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one SynthConfig key, e.g. --set nuisance=0.5 (repeatable)")


def run(args) -> int:
    from facepipe.config import load_config, parse_sets
    from facepipe.data.synth import SynthConfig, synthesize

    sets = parse_sets(args.set)
    sets.update({k: str(getattr(args, k)) for k in _FLAGS if getattr(args, k) is not None})
    cfg = load_config(SynthConfig, args.config, sets, section="synth")
    report = synthesize(cfg, args.out)
    summary = {k: report[k] for k in ("face_images", "eval_images", "pairs", "scenes", "faces_in_scenes",
                                       "seconds", "faces_per_s")}
    print(json.dumps(summary))
    return 0
