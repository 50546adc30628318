"""What every KFP component does around its step: config, checkpoint scratch, MLflow child run, report, publish.

Components (components/<step>/component.py) are thin: they import this module inside their body
and call `run_step` with local paths (KFP gives artifacts as local paths, also on a cluster where
the launcher copies them from the s3:// pipeline root). The step function itself stays pure.

- Config: the component receives its step's flat keys as one dict of pipeline parameter values;
  `params.decode_config` turns them back into the typed, validated config.
- Resume: with `FACEPIPE_SCRATCH_DIR` set (`facepipe run` sets it to runs/scratch; on a cluster
  point it at a volume), the step writes into a scratch folder keyed by step, config and inputs,
  which survives a killed attempt; the next attempt (KFP retry or a rerun with the same
  parameters) finds the step's checkpoints there and resumes. On success it moves to the output.
- Tracking: with `MLFLOW_TRACKING_URI` set, the step runs inside an MLflow child run of the
  parent run (parameter, else `FACEPIPE_MLFLOW_PARENT_RUN_ID`), with its params, metrics by step
  (through the `logger` the step function gets), plots, report, and a registered model version
  for trained models.
- Outputs: metrics go to the KFP Metrics artifact and, as JSON, to its file (kfp.local only
  caches a task whose Metrics artifact has a file); an HTML report embeds the plots; with an
  `output_uri` the output folder is also published there (manifest last).
"""

from __future__ import annotations

import base64
import hashlib
import html
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from facepipe.errors import FacepipeError
from facepipe.steps import STEPS

# The step functions' input folders, in their positional order (docs/architecture.md).
STEP_INPUTS = {
    "synth": [],
    "pack": ["src"],
    "train_detection": ["data_dir"],
    "train_recognition": ["data_dir"],
    "build_gallery": ["data_dir", "detector_path", "recognizer_path"],
    "evaluate": ["data_dir", "detector_path", "recognizer_path", "gallery_dir"],
    "recognize": ["data_dir", "gallery_dir", "detector_path", "recognizer_path"],
}
# Trained models are registered in the MLflow model registry under these names.
REGISTERED_MODELS = {"train_detection": "facepipe-detector", "train_recognition": "facepipe-recognizer"}

SCRATCH_ENV = "FACEPIPE_SCRATCH_DIR"
PARENT_ENV = "FACEPIPE_MLFLOW_PARENT_RUN_ID"
KFP_RUN_ENV = "FACEPIPE_KFP_RUN_ID"
TIMINGS_ENV = "FACEPIPE_TIMINGS"
MAX_PLOTS = 24


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) result dict as `a.b` keys."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, name + "."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def scratch_key(step: str, config: Mapping[str, Any], inputs: Mapping[str, str | None]) -> str:
    body = json.dumps({"step": step, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def _move_contents(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(item), str(target))


def _call_step(step: str, cfg, inputs: Mapping[str, str | None], out_dir: Path, logger) -> dict:
    fn = STEPS[step].step_function()
    args = [cfg] + [inputs.get(name) for name in STEP_INPUTS[step]] + [str(out_dir)]
    kwargs = {"logger": logger} if "logger" in inspect.signature(fn).parameters else {}
    result = fn(*args, **kwargs)
    return dict(result or {})


def plots(out_dir: Path) -> list[Path]:
    return sorted(out_dir.rglob("*.png"))[:MAX_PLOTS]


def write_report(path: Path, step: str, config: Mapping[str, Any], metrics: Mapping[str, float],
                 out_dir: Path, run_info: Mapping[str, str]) -> None:
    """A self-contained HTML page (plots inlined) that the KFP UI and MLflow both display."""
    esc = html.escape
    rows = lambda d: "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in d.items())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(step)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td{border:1px solid #ccc;padding:2px 8px}img{max-width:640px;display:block;margin:8px 0}</style>",
             f"</head><body><h1>facepipe step: {esc(step)}</h1>",
             f"<table>{rows(run_info)}</table>",
             f"<h2>Metrics</h2><table>{rows({k: f'{v:.6g}' for k, v in metrics.items()})}</table>"]
    for png in plots(out_dir):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h3>{esc(png.relative_to(out_dir).as_posix())}</h3>"
                     f"<img src='data:image/png;base64,{data}'>")
    md = out_dir / "report.md"
    if md.exists():
        parts.append(f"<h2>report.md</h2><pre>{esc(md.read_text()[:20000])}</pre>")
    parts.append(f"<h2>Config</h2><table>{rows(config)}</table></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


class _ChildRun:
    """An MLflow child run around one step, or nothing when no tracking URI is set."""

    def __init__(self, step: str, params: Mapping[str, Any], parent_run_id: str, tags: Mapping[str, str]):
        from facepipe.tracking import NullLogger

        self.run_id = None
        self.logger = NullLogger()
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        from facepipe import tracking

        parent = parent_run_id or os.environ.get(PARENT_ENV, "") or _kfp_parent(step)
        self.params = dict(params)
        self.run_id = tracking.start_step_run(parent or None, step, None, tags={k: v for k, v in tags.items() if v})
        self.logger = tracking.MlflowLogger(self.run_id)

    def finish(self, status: str) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from facepipe.secrets import redact_params
        from facepipe.tracking import end_run

        # The config as params, after the step: a step may log (some of) them itself, and MLflow
        # refuses a param logged twice with different spellings of the same value.
        client = MlflowClient()
        logged = client.get_run(self.run_id).data.params
        params = [Param(k, ("" if v is None else str(v))[:6000])
                  for k, v in sorted(redact_params(self.params).items()) if k not in logged]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i:i + 100])
        end_run(self.run_id, status)


def _kfp_parent(step: str) -> str:
    """On a KFP cluster: the parent run tagged with this KFP run id (made by `facepipe submit`, else here)."""
    from facepipe import tracking

    kfp_run_id = os.environ.get(KFP_RUN_ENV, "")
    if not kfp_run_id:
        return ""
    found = tracking.find_runs(tags={"facepipe.kfp_run_id": kfp_run_id, "facepipe.kind": "pipeline"}, max_results=1)
    if found:
        return found[0].info.run_id
    # Submitted without tracking from the client side: the first step makes the parent run.
    return tracking.start_pipeline_run(os.environ.get("MLFLOW_EXPERIMENT_NAME") or tracking.DEFAULT_EXPERIMENT,
                                       {"facepipe.kfp_run_id": kfp_run_id, "facepipe.created_by_step": step})


def run_step(step: str, config: Mapping[str, Any], inputs: Mapping[str, str | None], out_dir: str,
             metrics=None, report=None, parent_run_id: str = "", output_uri: str = "") -> dict:
    """Run one step the way a component does; returns the step's result dict.

    `inputs` maps the step's input names (STEP_INPUTS) to local paths (or None where optional);
    `metrics`/`report` are KFP Metrics/HTML output artifacts (or None outside KFP).
    """
    from facepipe.config import to_dict
    from facepipe.orchestration.params import decode_config

    cfg = decode_config(step, dict(config))
    cfg_dict = to_dict(cfg)
    out = Path(out_dir)
    scratch_root = os.environ.get(SCRATCH_ENV)
    work = Path(scratch_root) / f"{step}-{scratch_key(step, cfg_dict, inputs)}" if scratch_root else out
    if work != out and work.exists():
        print(f"[facepipe] {step}: resuming from the checkpoints of an interrupted attempt in {work}",
              file=sys.stderr, flush=True)
    work.mkdir(parents=True, exist_ok=True)

    tags = {"facepipe.step": step, "facepipe.output": out_dir,
            "facepipe.image": os.environ.get("FACEPIPE_IMAGE", ""),
            **{f"facepipe.input.{k}": str(v) for k, v in inputs.items() if v}}
    child = _ChildRun(step, cfg_dict, parent_run_id, tags)
    started = time.time()
    try:
        computed = time.time()
        result = _call_step(step, cfg, inputs, work, child.logger)
        _record_timing(step, time.time() - computed)
        if work != out:
            _move_contents(work, out)
            shutil.rmtree(work, ignore_errors=True)
        numbers = flat_metrics(result)
        seconds = time.time() - started
        if metrics is not None:
            for k, v in numbers.items():
                metrics.log_metric(k, v)
            Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
            Path(metrics.path).write_text(json.dumps(numbers, indent=2, sort_keys=True))
        info = {"step": step, "output": out_dir, "seconds": f"{seconds:.1f}",
                "mlflow run": child.run_id or "(tracking off)"}
        report_path = Path(report.path) if report is not None else out / "report.html"
        write_report(report_path, step, cfg_dict, numbers, out, info)
        if child.run_id:
            child.logger.log_metrics({**numbers, "step_seconds": seconds})
            for png in plots(out):
                child.logger.log_artifact(png, "plots")
            child.logger.log_artifact(report_path, "report")
            for name in ("metrics.json", "report.md"):
                if (out / name).exists():
                    child.logger.log_artifact(out / name)
            if step in REGISTERED_MODELS:
                _register(child, out, REGISTERED_MODELS[step])
        if output_uri:
            from facepipe import storage

            target = f"{output_uri.rstrip('/')}/{step}"
            storage.upload(str(out), target)
            if child.run_id:
                child.logger.set_tags({"facepipe.published": target})
    except BaseException:
        child.finish("FAILED")
        raise
    child.finish("FINISHED")
    return result


def _record_timing(step: str, seconds: float) -> None:
    """Append the step function's own time to $FACEPIPE_TIMINGS (JSON lines; bench/pipeline.py reads it)."""
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "seconds": seconds}) + "\n")


def _register(child: _ChildRun, out: Path, name: str) -> None:
    from facepipe import tracking

    for file in ("model.pt", "model.onnx", "metrics.json"):
        if (out / file).exists():
            child.logger.log_artifact(out / file, "model")
    version = tracking.register_model(child.run_id, "model", name)
    child.logger.set_tags({"facepipe.registered_model": f"{name}/{getattr(version, 'version', version)}"})


def localize_data(data_uri: str, dest: str) -> None:
    """Given data for the pipeline: copy/download `data_uri` into the `dest` artifact folder."""
    from facepipe import storage

    if not data_uri:
        raise FacepipeError("localize_data needs a data URI")
    storage.download(data_uri, dest)


def subdir(path: str, name: str) -> str | None:
    """`path/name` when that folder exists (e.g. the detection/ part of a data folder), else None."""
    p = Path(path) / name
    return str(p) if p.exists() else None
