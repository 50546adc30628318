"""Typed step configs: dataclasses loaded from YAML job files, overridden with `--set key=value`.

Every step has one flat dataclass (no nesting): the same key names appear as CLI `--set` keys,
MLflow params and KFP pipeline parameters. A job file (`jobs/NAME.yaml`) holds one section per
step (`pack:`, `train_recognition:`, ...); a step reads its own section, or the whole file when the
file has no step sections.

Constraints are declared on the field:

    backbone: str = choice("iresnet50", ["iresnet18", "iresnet50", "mobilefacenet"])
    lr: float = bounded(0.1, low=0.0, low_inclusive=False)

and `load_config` checks them up front, naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from facepipe.errors import ConfigError

T = TypeVar("T")


def choice(default, choices: Iterable, help: str = ""):
    """A field whose value must be one of `choices`."""
    return dataclasses.field(default=default, metadata={"choices": list(choices), "help": help})


def bounded(default, low=None, high=None, low_inclusive=True, high_inclusive=True, help: str = ""):
    """A numeric field with an allowed range."""
    return dataclasses.field(
        default=default,
        metadata={"low": low, "high": high, "low_inclusive": low_inclusive,
                  "high_inclusive": high_inclusive, "help": help},
    )


def listfield(default: list, help: str = ""):
    """A list-valued field (lists are written `1,2,3` on the command line)."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls_name: str, key: str, typ, value):
    """Turn a YAML value or a `--set` string into the field's declared type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(cls_name, key, args[0], value)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError(value)  # nan/inf pass every range check and poison training
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if origin in (list, tuple):
            (inner,) = typing.get_args(typ)[:1] or (str,)
            if isinstance(value, str):
                text = value.strip()
                if text.startswith("["):
                    value = json.loads(text)
                else:
                    value = [v for v in text.split(",") if v.strip() != ""]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return [_coerce(cls_name, key, inner, v) for v in value]
        if origin is dict or typ is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(
            f"{cls_name}.{key}: expected {'a finite float' if typ is float else getattr(typ, '__name__', str(typ))}, "
            f"got {value!r}"
        ) from None
    return value


def _check_constraints(cfg) -> None:
    name = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(
                f"{name}.{f.name}: {value!r} is not allowed; choose one of {meta['choices']}"
            )
        low, high = meta.get("low"), meta.get("high")
        if value is None or (low is None and high is None):
            continue
        if low is not None and (value < low or (value == low and not meta.get("low_inclusive", True))):
            op = ">=" if meta.get("low_inclusive", True) else ">"
            raise ConfigError(f"{name}.{f.name}: {value!r} is out of range; expected {op} {low}")
        if high is not None and (value > high or (value == high and not meta.get("high_inclusive", True))):
            op = "<=" if meta.get("high_inclusive", True) else "<"
            raise ConfigError(f"{name}.{f.name}: {value!r} is out of range; expected {op} {high}")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


def parse_sets(sets: Iterable[str] | None) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}` with a clear error for a missing `=`."""
    out: dict[str, str] = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def field_default(cls, f: dataclasses.Field) -> Any:
    """A config field's default value; every step config key has one (CLI flags and pipeline
    parameters show it)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ConfigError(f"{cls.__name__}.{f.name} has no default; every pipeline parameter needs one")


def keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build and validate `cls` from a flat mapping; unknown keys are an error listing valid ones."""
    hints = _field_types(cls)
    valid = keys(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {valid}"
        )
    kwargs = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in values.items()}
    cfg = cls(**kwargs)
    _check_constraints(cfg)
    return cfg


def project_file(relative: str) -> Path:
    """A file the project ships (pipeline.yaml, jobs/, images/images.lock.json): from the source
    checkout holding this package, else where the wheel put them (<prefix>/share/facepipe)."""
    checkout = Path(__file__).resolve().parents[2]
    return (checkout if (checkout / "pyproject.toml").is_file() else Path(sys.prefix, "share", "facepipe")) / relative


def read_job_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists() and len(path.parts) == 1 and not path.suffix:  # a shipped job by name: `tiny`
        path = project_file(f"jobs/{path}.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        shipped = sorted(p.stem for p in project_file("jobs").glob("*.yaml"))
        raise ConfigError(f"{path}: config file not found (job names shipped: {shipped})") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML text file ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (or of step sections) at top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, sets: Iterable[str] | dict | None = None,
                section: str | None = None) -> T:
    """Defaults, then the YAML file (its `section` if it has one), then `--set` overrides."""
    values: dict[str, Any] = {}
    source = cls.__name__
    if path is not None:
        data = read_job_file(path)
        if section is not None and any(isinstance(v, dict) for v in data.values()):
            data, source = _section(data, section, path), f"{path} [{section}]"
        else:
            source = str(path)
        values.update(data)
    overrides = sets if isinstance(sets, dict) else parse_sets(sets)
    if overrides:
        values.update(overrides)
        source = f"{source} + --set"
    return from_dict(cls, values, source=source)


def _section(data: dict[str, Any], section: str, path) -> dict[str, Any]:
    """A job file's section for one step; a misspelled or missing section is an error, not defaults."""
    import difflib

    from facepipe.steps import STEPS

    known = set(STEPS) | {"pipeline", section}
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"{path}: unknown section(s) {unknown}"
                          f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; sections: {sorted(known)}")
    if section not in data:
        raise ConfigError(f"{path}: no {section!r} section (it has {sorted(data)}); add one, or pass a file "
                          f"of {section} keys")
    if not isinstance(data[section], dict):
        raise ConfigError(f"{path}: section {section!r} must be a mapping of keys")
    return data[section]


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def diff(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between two config dicts (used to refuse a mismatched resume)."""
    skip = set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))
