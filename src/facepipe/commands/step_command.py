"""What every step command shares, derived from its Step record and config: positionals, flags, config, run.

A step command's positionals are its step's input ports (metavar, help) then its output; its
shortcut flags are config keys (type, choices, help and default read off the config dataclass), and
every key is also taken as an unlisted `--key=value` (ModelArts appends a job's parameters so);
`--config`, `--set` and `--run-name` are the same everywhere. Flags beat `--set`, which beats
`--config`, which beats the defaults. Every path may be local, file://, s3:// or obs://.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from facepipe.config import field_default
from facepipe.steps import STEPS

URI_NOTE = "local path, file://, s3:// or obs://"


def add_step_arguments(parser, step_name: str, output: str | None, output_help: str,
                       flags: tuple[str, ...] = ()) -> None:
    """Positionals from the ports, then OUTPUT (or `--out` when `output` is None), flags, --config/--set."""
    step = STEPS[step_name]
    for port in step.inputs:
        parser.add_argument(port.arg, metavar=port.metavar or port.arg.upper(), help=f"{port.help} ({URI_NOTE})")
    if output is None:
        parser.add_argument("--out", default=f"{step.name}_out", help=f"{output_help} (default ./{step.name}_out)")
    else:
        parser.add_argument("out", metavar=output, help=f"{output_help} ({URI_NOTE}; a URI is published when complete)")
    cls = step.config_class()
    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)
    for key in flags:
        field, typ = fields[key], hints[key]
        typ = next((a for a in typing.get_args(typ) if a is not type(None)), typ)  # Optional[X] -> X
        help_text = f"{field.metadata.get('help', key)} (default {field_default(cls, field)})"
        option = "--" + key.replace("_", "-")
        if typ is bool:
            parser.add_argument(option, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(option, dest=key, type=typ, choices=field.metadata.get("choices"), help=help_text)
    # `--key=value` for every other config key, unlisted: how ModelArts hands a job its parameters
    # (appended to the command), so the console's edits of them reach the step
    appended = [k for k in fields if f"--{k}" not in parser._option_string_actions]
    for key in appended:
        parser.add_argument(f"--{key}", dest=f"param_{key}", metavar="VALUE", help=argparse.SUPPRESS)
    parser.set_defaults(step_flags=flags, step_params=appended)
    parser.add_argument("--config", help=f"job YAML file or shipped job name (its '{step_name}' section)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")


def step_config(args, step_name: str):
    """The step's typed config: defaults < --config section < --set < flags."""
    from facepipe.config import load_config, parse_sets

    sets = parse_sets(args.set)
    sets.update({k: getattr(args, f"param_{k}") for k in args.step_params if getattr(args, f"param_{k}") is not None})
    sets.update({k: getattr(args, k) for k in args.step_flags if getattr(args, k) is not None})
    return load_config(STEPS[step_name].config_class(), args.config, sets, section=step_name)


def run_step_command(args, step_name: str, **options) -> dict:
    """Run the step through the edge on the command's inputs and output; returns its result."""
    from pathlib import PurePosixPath

    from facepipe.edge import run_command

    inputs = {port.arg: getattr(args, port.arg) for port in STEPS[step_name].inputs}
    run_name = args.run_name or PurePosixPath(str(args.out).rstrip("/")).name
    return run_command(step_name, step_config(args, step_name), inputs, args.out, run_name=run_name, **options)
