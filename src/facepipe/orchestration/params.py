"""Pipeline parameters: every step config key as one flat KFP parameter named `<step>__<key>`.

The pipeline's parameters are derived from the step config dataclasses (facepipe.steps), so a key
added to a config is a pipeline parameter after `make compile`. Two steps may share a key name
(`epochs`, `seed`), hence the step prefix; the double underscore keeps names valid identifiers.

Types map to KFP parameter types: int, float, bool and str stay themselves; optional values
(`None` default) and lists/dicts become strings (`""` means None; lists as JSON, e.g.
`[[16, 32], [64, 128]]`, or `1,2,3` for flat lists), which the component turns back into the
config's types. Besides the step keys the pipeline has a few run-level parameters
(`RUN_PARAMETERS`): the given data, where to publish outputs, and the MLflow experiment and run to
nest under; no step task takes them (but pack the data), so they never change a step's cache key.

Users write `--set step.key=value` (or `step__key=value`); job files have one section per step.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from facepipe.config import field_default, from_dict, parse_sets, read_job_file
from facepipe.errors import ConfigError
from facepipe.steps import STEPS

SEP = "__"

# Run-level pipeline parameters (job file section `pipeline:`, `--set pipeline.KEY=...`).
RUN_PARAMETERS = {
    "data_uri": ("", "given data (file://, s3://, obs:// or a path) with faces/<identity>/*.jpg and "
                     "detection/{train,val,test}/; empty: synthesize it from the synth__* parameters"),
    "output_uri": ("", "where the run also publishes each step's output (<output_uri>/<step>/, by a light publish "
                       "task: not part of any step's cache key); empty: only the pipeline root"),
    "mlflow_parent_run_id": ("", "an MLflow run to nest the run's parent run under (a standalone component: "
                                 "its step run); empty: none"),
    "mlflow_experiment": ("", "MLflow experiment of the run's parent run; empty: MLFLOW_EXPERIMENT_NAME, else "
                              "facepipe"),
}
RUN_SECTION = "pipeline"


@dataclass(frozen=True)
class Parameter:
    name: str          # pipeline parameter name, e.g. train_recognition__epochs
    step: str
    key: str
    kind: type         # int, float, bool or str (what KFP sees)
    default: Any       # in KFP form
    encoded: bool      # True when the config value is carried as a string (optional, list, dict)
    help: str = ""     # the description KFP shows: the key's help text, its limits and encoding


def parameter_name(step: str, key: str) -> str:
    return f"{step}{SEP}{key}"


def _kfp_kind(typ) -> tuple[type, bool]:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return str, True
    if typ in (int, float, bool, str):
        return typ, False
    return str, True


def encode(value: Any, encoded: bool) -> Any:
    """A config value in the form its pipeline parameter carries."""
    if not encoded:
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def step_parameters(step: str) -> list[Parameter]:
    cls = STEPS[step].config_class()
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, encoded = _kfp_kind(hints[f.name])
        value = encode(field_default(cls, f), encoded)
        out.append(Parameter(parameter_name(step, f.name), step, f.name, kind, value, encoded,
                             _describe(step, f, value, encoded)))
    return out


def _describe(step: str, f: dataclasses.Field, default: Any, encoded: bool) -> str:
    """What KFP shows for a parameter: the key's help, its choices or range, the string encoding."""
    meta, low, high = f.metadata, f.metadata.get("low"), f.metadata.get("high")
    parts = [meta.get("help") or f"{step} config key {f.name}"] + ([f"one of {meta['choices']}"] if "choices" in meta else [])
    parts += [f"range {'' if low is None else low}..{'' if high is None else high}"] if (low, high) != (None, None) else []
    parts += [f"text: lists/dicts as JSON (default {json.dumps(default)}), empty means None"] if encoded else []
    return "; ".join(parts)


def pipeline_parameters(steps: Iterable[str]) -> list[Parameter]:
    params = [Parameter(name, RUN_SECTION, name, str, default, False)
              for name, (default, _) in RUN_PARAMETERS.items()]
    for step in steps:
        params += step_parameters(step)
    return params


def decode_config(step: str, values: dict[str, Any]):
    """Component side: parameter values (strings for encoded ones, `5.0` for ints) -> the step's config."""
    cls = STEPS[step].config_class()
    hints = typing.get_type_hints(cls)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        typ = hints.get(key)
        if typ is int and isinstance(value, (str, float)) and not isinstance(value, bool):
            # KFP carries numbers as doubles: 5 arrives as 5.0 or "5.0".
            try:
                as_float = float(value)
                value = int(as_float) if as_float.is_integer() else value
            except ValueError:
                pass
        clean[key] = value
    return from_dict(cls, clean, source=f"step {step}")


class Arguments:
    """Resolve a job file plus `--set` overrides into pipeline arguments, validated up front."""

    def __init__(self, steps: Iterable[str]):
        self.steps = list(steps)
        self.parameters = {p.name: p for p in pipeline_parameters(self.steps)}

    def name_for(self, dotted: str, where: str) -> str:
        """`step.key`, `step__key` or `pipeline.key`/`key` for run-level ones -> parameter name."""
        if SEP in dotted and "." not in dotted:
            step, key = dotted.split(SEP, 1)
        elif "." in dotted:
            step, key = dotted.split(".", 1)
        elif dotted in RUN_PARAMETERS:
            step, key = RUN_SECTION, dotted
        else:
            raise ConfigError(f"{where}: {dotted!r} names no step; write STEP.KEY with STEP one of "
                              f"{[RUN_SECTION] + self.steps}")
        if step == RUN_SECTION:
            if key not in RUN_PARAMETERS:
                raise ConfigError(f"{where}: unknown pipeline parameter {key!r}; valid: {sorted(RUN_PARAMETERS)}")
            return key
        if step not in self.steps:
            hint = " (a standalone step, not part of the pipeline)" if step in STEPS else ""
            raise ConfigError(f"{where}: unknown step {step!r}{hint}; valid steps: {[RUN_SECTION] + self.steps}")
        name = parameter_name(step, key)
        if name not in self.parameters:
            keys = [p.key for p in self.parameters.values() if p.step == step]
            raise ConfigError(f"{where}: unknown key {key!r} for step {step!r}; valid keys: {keys}")
        return name

    def from_job(self, path: str | Path | None) -> dict[str, Any]:
        """Parameter values given by a job file (sections per step, plus `pipeline:`)."""
        if path is None:
            return {}
        data = read_job_file(path)
        values: dict[str, Any] = {}
        for section, body in data.items():
            if section in STEPS and section not in self.steps:
                continue  # a standalone step's settings (e.g. recognize) are not pipeline parameters
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping of keys; "
                                  f"sections: {[RUN_SECTION] + self.steps}")
            for key, value in body.items():
                values[self.name_for(f"{section}.{key}", str(path))] = value
        return values

    def from_sets(self, sets: Iterable[str] | None) -> dict[str, Any]:
        return {self.name_for(k, f"--set {k}={v}"): v for k, v in parse_sets(sets).items()}

    def resolve(self, job: str | Path | None = None, sets: Iterable[str] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
        """All parameter values (defaults < base < job < sets), checked against the step configs."""
        values = {name: p.default for name, p in self.parameters.items()}
        values.update(base or {})
        values.update(self.from_job(job))
        values.update(self.from_sets(sets))
        out = {name: ("" if values[name] is None else str(values[name]))
               for name, p in self.parameters.items() if p.step == RUN_SECTION}
        for step in self.steps:
            cfg = self.config(step, values)  # raises ConfigError naming the key
            for p in self.parameters.values():
                if p.step == step:
                    value = getattr(cfg, p.key)
                    out[p.name] = encode(value, True) if p.encoded else p.kind(value)
        return out

    def config(self, step: str, values: dict[str, Any]):
        keyed = {p.key: values[p.name] for p in self.parameters.values() if p.step == step}
        return decode_config(step, keyed)
