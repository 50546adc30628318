"""The `facepipe` command: one subcommand per step or tool, each in facepipe/commands/<name>.py.

Subcommand modules are imported only when called, so `facepipe pack` never imports torch.
Each module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from facepipe.errors import FacepipeError
from facepipe.steps import STEPS

# The step commands come from the step records; these are the tools around them.
TOOLS = ["labels", "label-faces", "rec-info", "unpack", "detect", "gallery", "evaluate", "run", "runs", "rerun", "compare", "serve", "submit",
         "submit-modelarts", "storage"]
COMMANDS = [s.command for s in STEPS.values() if s.command] + TOOLS


def load_command(name: str):
    """`facepipe <name>` lives in facepipe/commands/<name with '-' as '_'>.py."""
    return importlib.import_module(f"facepipe.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="facepipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name in COMMANDS:
        if wanted is not None and name != wanted:
            sub.add_parser(name)
            continue
        try:
            module = load_command(name)
        except ModuleNotFoundError as exc:
            if wanted is not None or not exc.name or not exc.name.startswith("facepipe.commands"):
                raise
            continue  # not built yet: hidden from the listing
        p = sub.add_parser(name, help=getattr(module, "HELP", None),
                           description=getattr(module, "HELP", None))
        module.add_arguments(p)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(load_command(args.command).run(args) or 0)
    except FacepipeError as exc:
        print(f"facepipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that is a file, a read-only folder, a full disk: one line naming the path
        where = ": ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        print(f"facepipe {args.command}: error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facepipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
