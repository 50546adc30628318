"""The step edge: URIs in, the step function called by keyword, its params logged once, the output published.

The CLI step commands (`run_command`) and the component runtime (`orchestration.component_runtime.
run_step`) both go through `local_inputs` and `call_step`, so a step gets the same local paths and its
run the same params (the config's own keys, values as given: `device` stays "auto") whichever way it ran.
Inputs are keyed by the step's port args (`facepipe.steps.Port.arg`); each is a local path or a
file://, s3://, obs:// URI, and `None` / "none" / "" where the port is optional. Where a port's layout is
a file (`model.pt`), a model folder and its model.pt both work; where the artifact is a sharded data
tree (`facepipe.data.shards`), the step gets the folder extracted.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import PurePosixPath
from typing import Any, Mapping

from facepipe import storage
from facepipe.errors import ConfigError
from facepipe.steps import STEPS, Step

LEFT_OUT = ("", "none", "-")  # how the CLI and the pipeline say "no detector"


def given(value: Any) -> str | None:
    """The input as a string, or None where it was left out."""
    return None if value is None or str(value).strip().lower() in LEFT_OUT else str(value)


def fetch(stack: contextlib.ExitStack, uri: str, model_file: str = "", quiet: bool = False) -> str:
    """A local path for `uri`, kept until `stack` closes. With `model_file`, a folder holding that
    file stands for the file: only the file is fetched (not the checkpoints beside it)."""
    uri = str(uri).rstrip("/") or str(uri)
    if model_file and PurePosixPath(uri).name != model_file and storage.exists(f"{uri}/{model_file}"):
        uri = f"{uri}/{model_file}"
    return str(stack.enter_context(storage.localize(uri, quiet=quiet)))


@contextlib.contextmanager
def local_inputs(step: Step, inputs: Mapping[str, Any], quiet: bool = False):
    """Yield {port arg: local path or None} for the step's inputs; downloads are removed on exit."""
    unknown = sorted(set(inputs) - {p.arg for p in step.inputs})
    if unknown:
        raise ConfigError(f"step {step.name}: unknown inputs {unknown}; expected {[p.arg for p in step.inputs]}")
    with contextlib.ExitStack() as stack:
        local: dict[str, str | None] = {}
        for port in step.inputs:
            uri = given(inputs.get(port.arg))
            if uri is None and not port.optional:
                raise ConfigError(f"step {step.name}: input {port.metavar or port.arg} ({port.arg}) is required")
            model_file = port.layout if PurePosixPath(port.layout).suffix else ""  # a file, not a folder
            local[port.arg] = uri and open_tree(stack, uri, model_file, quiet)
        yield local


def open_tree(stack: contextlib.ExitStack, uri: str, model_file: str = "", quiet: bool = False) -> str:
    """`fetch`, where a sharded data tree (facepipe.data.shards: the pipeline's `images`) or one of
    its folders (`IMAGES/detection`, stored as `IMAGES/detection.tar`) is extracted for the step."""
    from facepipe.data.shards import unsharded

    local = fetch(stack, stack.enter_context(unsharded(uri)), model_file, quiet)
    return stack.enter_context(unsharded(local))  # a sharded tree that was downloaded whole


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) result dict as `a.b` keys."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float)) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class _SeenMetrics:
    """Passes everything to a RunLogger, remembering which metric keys went through."""

    def __init__(self, inner):
        self.inner, self.seen = inner, set()

    def log_metrics(self, metrics, step=None):
        self.seen.update(metrics)
        self.inner.log_metrics(metrics, step=step)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def log_inputs(step: Step, sources: Mapping[str, Any], local: Mapping[str, str | None], logger) -> None:
    """Log the step's data inputs (folder ports; models are linked through the registry) as the
    run's datasets: named by artifact, sourced at the URI as given, with the content digest of the
    manifest of the facepipe output holding it (the port's folder or the artifact above it)."""
    from pathlib import Path

    from facepipe.manifest import MANIFEST, content_digest

    for port in step.inputs:
        path, source = local.get(port.arg), given(sources.get(port.arg))
        if not path or PurePosixPath(port.layout).suffix or not Path(path).is_dir():
            continue
        # A pipeline artifact's subfolder (images/detection) carries no manifest; its artifact does.
        holder = next((p for p in [Path(path), *Path(path).parents][:len(PurePosixPath(port.layout).parts) + 1]
                       if (p / MANIFEST).is_file()), None)
        name = f"{port.artifact}/{port.layout}" if port.layout else port.artifact
        profile = {"manifest": "yes" if holder else "none (digest of the file names and sizes)"}
        logger.log_input(name, source or path, "sha256:" + content_digest(holder or path), port.arg, profile)


def call_step(step: Step, cfg, inputs: Mapping[str, str | None], out_dir, logger, *,
              sources: Mapping[str, Any] | None = None, **options) -> dict:
    """Log the config as the run's params (and the data inputs, `sources` being the URIs the local
    `inputs` came from) and, after the step, its result's numbers that it did not log itself by
    training step: the only place a step run's params and final metrics are logged.
    The step runs on every rank of this node where its config's `nproc_per_node` asks for more than one."""
    from facepipe.config import to_dict
    from facepipe.training import launch

    logger.log_params(to_dict(cfg))
    log_inputs(step, sources or inputs, inputs, logger)
    seen = _SeenMetrics(logger)
    if launch.needs_launch(cfg):
        result = launch.launch(step.name, cfg, dict(inputs), str(out_dir), seen, **options)
    else:
        result = dict(step.step_function()(cfg, **inputs, out_dir=str(out_dir), logger=seen, **options) or {})
    final = {k: v for k, v in flat_metrics(result).items() if k not in seen.seen}
    if final:
        logger.log_metrics(final)
    return result


def run_tags(step: str, inputs: Mapping[str, Any], out: str) -> dict[str, str]:
    """What a step's run is tagged with, on the CLI and in the pipeline alike."""
    return {"facepipe.step": step, "facepipe.output": str(out),
            **{f"facepipe.input.{k}": str(v) for k, v in inputs.items() if given(v)}}


def run_command(step_name: str, cfg, inputs: Mapping[str, Any], out: str, *, run_name: str = "",
                main_process: bool = True, quiet: bool = False, **options) -> dict:
    """A CLI step command: localize the inputs, run the step into `out` (published there when it is
    a URI) inside an MLflow run when tracking is on; returns the step's result.

    Under torchrun only the main process tracks and publishes; the others write into `out` as given,
    or, where it is a URI (nodes of a TrainJob or a ModelArts job), into a folder of their own that
    holds their checkpoint shards until they exit.
    """
    import tempfile

    from facepipe.tracking import command_logger

    step = STEPS[step_name]
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(local_inputs(step, inputs, quiet=quiet))
        if main_process:
            out_dir = stack.enter_context(storage.output_dir(out, quiet=quiet))
        else:
            out_dir = out if storage.parse_uri(out).is_local else stack.enter_context(tempfile.TemporaryDirectory())
        logger = stack.enter_context(command_logger(run_name or step_name, run_tags(step_name, inputs, out),
                                                    enabled=main_process,
                                                    entry=f"facepipe {step.command or step_name}"))
        return call_step(step, cfg, local, out_dir, logger, sources=inputs, **options)
