"""`facepipe evaluate KIND ...`: verification, identification or detection; writes OUT/metrics.json + PNG plots."""

from __future__ import annotations

import importlib

HELP = "evaluate a recognizer (verification, identification) or a detector (detection)"

# kind -> module defining add_arguments(parser) and run(args) -> int
KINDS = {
    "verification": "facepipe.evaluation.verification_cli",
    "identification": "facepipe.evaluation.identification_cli",
    "detection": "facepipe.evaluation.detection_cli",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, module_name in KINDS.items():
        p = sub.add_parser(kind)
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ModuleNotFoundError:
            p.description = f"{kind} evaluation is not available in this build"


def run(args) -> int:
    return importlib.import_module(KINDS[args.kind]).run(args)
