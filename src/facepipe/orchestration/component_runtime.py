"""What every KFP component does around its step: config, checkpoint URI, MLflow child run, report, publish.

Components (components/<step>/component.py, generated) call `run_component`, which calls
`run_step` with their inputs keyed by port arg: local paths (KFP gives artifacts as local
paths, also on a cluster where the launcher copies them from the s3:// pipeline root) or URIs, which
`facepipe.edge` localizes. The step function itself stays pure.

- Config: the component receives one typed input per config key (`<step>__<key>`, strings for
  lists/optionals); `run_component` gathers them, `params.decode_config` makes the typed config.
- Resume: a trainer's checkpoints also go to a checkpoint URI that outlives the pod (its
  `checkpoint_uri`, else `<checkpoint root>/checkpoints/<step>/<digest of config and inputs>`, the
  root being FACEPIPE_CHECKPOINT_ROOT or the KFP pipeline root: `facepipe.orchestration.attempts`);
  the next attempt (KFP retry, preempted pod, rerun with the same parameters) resumes from the newest
  complete one there. They are removed once the step's output is complete.
- Configuration errors: a `ConfigError` makes the component exit with `attempts.EXIT_CONFIG_ERROR`
  and records itself, so that a KFP retry of it fails at once instead of redoing the work.
- Tracking: with `MLFLOW_TRACKING_URI` set, the step runs inside an MLflow child run of the
  pipeline run's parent (`pipeline_run.find_parent`: by the pipeline run's id, never a task input;
  under KFP's own run of the task where KFP sets `MLFLOW_RUN_ID`; `FACEPIPE_MLFLOW_PARENT_RUN_ID`
  overrides), with its config as params (logged once, by `edge.call_step`), metrics by step
  (through the `logger` the step function gets), plots, report, and a registered model version
  for trained models. A step never ends the parent: the pipeline's finalizer task does.
- Data: the pack task's `images` (synth's tree or the given data) is stored as one tar per folder
  (`facepipe.data.shards`); the later steps get the folders they read extracted (`edge.open_tree`).
- Outputs: metrics go to the KFP Metrics artifact and, as JSON, to its file (kfp.local only
  caches a task whose Metrics artifact has a file); an HTML report embeds the plots; the `lineage`
  output parameter names the pipeline run and MLflow runs that made the task's artifacts (it is
  cached with them, so a reused step still points at its producer). Publishing to `output_uri` is
  a separate light task in the pipeline (the target is no part of a step's cache key); a standalone
  component (recognize) still publishes itself.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from facepipe.errors import ConfigError, FacepipeError
from facepipe.orchestration import attempts
from facepipe.steps import STEPS

PARENT_ENV = "FACEPIPE_MLFLOW_PARENT_RUN_ID"
SPOOL_ENV = "FACEPIPE_TRACKING_SPOOL"
RUN_PID_ENV = "FACEPIPE_RUN_PID"  # set by `facepipe run`: its step processes end when it dies
TIMINGS_ENV = "FACEPIPE_TIMINGS"
MAX_PLOTS = 24


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
    """An MLflow child run around one step: logged directly, spooled for the local runner, or nothing.

    Direct (a cluster): the step process talks to the tracking server. Spooled (`facepipe run`
    sets FACEPIPE_TRACKING_SPOOL): the step appends its tracking events to a JSON-lines file and
    the runner, which already has MLflow loaded, replays them (`replay_spool`); that saves each
    step process the MLflow import and store setup (seconds). Without a tracking URI: nothing.
    Either way the run is tagged with a fresh `facepipe.step_run_key`, which the task's lineage
    carries, so a later run that reuses this output finds this run even before it was replayed.
    """

    def __init__(self, step: str, parent_run_id: str, tags: Mapping[str, str]):
        from facepipe.orchestration import pipeline_run
        from facepipe.run_logger import NullLogger

        self.run_id = None
        self.spool = None
        self.logger = NullLogger()
        self.step = step
        self.key = pipeline_run.new_step_run_key()
        tags = {k: v for k, v in tags.items() if v} | {pipeline_run.STEP_RUN_KEY_TAG: self.key}
        explicit = (parent_run_id or os.environ.get(pipeline_run.KFP_MLFLOW_RUN_ENV, "")
                    or os.environ.get(PARENT_ENV, ""))
        spool_dir = os.environ.get(SPOOL_ENV)
        if spool_dir and os.environ.get("MLFLOW_TRACKING_URI"):
            self.spool = SpoolLogger(Path(spool_dir), step, explicit, pipeline_run.run_identity(), tags)
            self.logger = self.spool
            return
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        from facepipe import tracking

        self.run_id = tracking.start_step_run(explicit or pipeline_run.find_parent() or None, step, None, tags=tags)
        self.logger = tracking.MlflowLogger(self.run_id)

    @property
    def active(self) -> bool:
        return bool(self.run_id or self.spool)

    @property
    def label(self) -> str:
        return self.run_id or ("spooled for the runner" if self.spool else "(tracking off)")

    def log_model(self, kind: str, files: Mapping[str, str | None], name: str) -> None:
        if self.spool:
            self.spool.event("model", kind=kind, files={k: v and str(Path(v).resolve()) for k, v in files.items()},
                             name=name)
            return
        from facepipe import tracking

        version = tracking.log_model(self.run_id, kind, files, name)
        self.logger.set_tags({"facepipe.registered_model": f"{name}/{getattr(version, 'version', version)}"})

    def finish(self, status: str) -> None:
        if self.spool:
            self.spool.event("end", status=status)
            return
        from facepipe.tracking import end_run

        if self.run_id:
            end_run(self.run_id, status)

    def lineage(self) -> dict[str, str]:
        return {"mlflow_run_id": self.run_id or "", "step_run_key": self.key}


class SpoolLogger:
    """A RunLogger that appends events to `<spool>/<time>-<step>-<pid>.jsonl` for `replay_spool`."""

    def __init__(self, spool: Path, step: str, parent: str, identity: tuple[str, str], tags: Mapping[str, str]):
        spool.mkdir(parents=True, exist_ok=True)
        self.path = spool / f"{time.time():.6f}-{step}-{os.getpid()}.jsonl"
        self.event("start", step=step, parent=parent, pipeline_run=list(identity), tags=dict(tags))

    def event(self, op: str, **body) -> None:
        from facepipe.secrets import redact

        line = redact(json.dumps({"op": op, "time": time.time(), **body}, default=str))
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def log_params(self, params):
        self.event("params", params=dict(params))  # cleaned by the MlflowLogger that replays them

    def log_metrics(self, metrics, step=None):
        self.event("metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step or 0)

    def log_artifact(self, path, artifact_path=None):
        self.event("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def set_tags(self, tags):
        self.event("tags", tags={k: str(v) for k, v in tags.items()})

    def log_input(self, name, source, digest, context, profile=None):
        self.event("input", name=name, source=str(source), digest=digest, context=context,
                   profile=dict(profile or {}))


def replay_spool(spool: str | Path) -> list[str]:
    """Create the MLflow child runs the spooled steps describe (oldest first); returns their run ids.

    A file is removed once replayed; one left behind by a killed runner is replayed next time.
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from facepipe import tracking

    client = MlflowClient()
    created = []
    parents: dict[tuple[str, str], str] = {}
    for path in sorted(Path(spool).glob("*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not events or events[0]["op"] != "start":
            path.unlink()
            continue
        first = events[0]
        parent = first["parent"]
        tag, pipeline_run_id = first.get("pipeline_run") or ("", "")
        if not parent and pipeline_run_id:  # the pipeline's parent, made by its `begin` task
            if (tag, pipeline_run_id) not in parents:
                found = tracking.find_runs(tags={tag: pipeline_run_id, "facepipe.kind": "pipeline"}, max_results=1)
                parents[(tag, pipeline_run_id)] = found[0].info.run_id if found else ""
            parent = parents[(tag, pipeline_run_id)]
        run_id = tracking.start_step_run(parent or None, first["step"], None, tags=first["tags"])
        logger = tracking.MlflowLogger(run_id)
        status, metrics = "KILLED", []
        for e in events[1:]:
            if e["op"] == "params":
                logger.log_params(e["params"])
            elif e["op"] == "metrics":
                metrics += [Metric(k, v, int(e["time"] * 1000), e["step"]) for k, v in e["metrics"].items()]
            elif e["op"] == "artifact" and Path(e["path"]).exists():
                logger.log_artifact(e["path"], e["artifact_path"])
            elif e["op"] == "input":
                logger.log_input(e["name"], e["source"], e["digest"], e["context"], e["profile"])
            elif e["op"] == "tags":
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in e["tags"].items()])
            elif e["op"] == "model":
                version = tracking.log_model(run_id, e["kind"], e["files"], e["name"])
                logger.set_tags({"facepipe.registered_model": f"{e['name']}/{version.version}"})
            elif e["op"] == "end":
                status = e["status"]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        tracking.end_run(run_id, status)
        path.unlink()
        created.append(run_id)
    return created


def _end_with(pid: int, every_s: float = 1.0) -> None:
    """End this step process soon after process `pid` (the `facepipe run` that started it) is gone,
    even killed by SIGKILL, which no handler sees: its steps would run on with nobody to record them."""
    import signal
    import threading

    def watch():
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"[facepipe] the run (pid {pid}) is gone; ending this step", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass  # alive, another user's
            time.sleep(every_s)

    threading.Thread(target=watch, name="facepipe-run-watch", daemon=True).start()


def run_step(step: str, config: Mapping[str, Any], inputs_by_arg: Mapping[str, str | None], out_path: str,
             metrics=None, report=None, parent_run_id: str = "", output_uri: str = "",
             artifact_uri: str = "", lineage: dict | None = None) -> dict:
    """Run one step the way a component does; returns the step's result dict.

    `inputs_by_arg` maps the step's port args (`Step.inputs`) to local paths or URIs (None or
    "none" where optional), localized by `facepipe.edge`; `out_path` is a local folder or a URI
    (published when the step succeeds); `metrics`/`report` are KFP Metrics/HTML output artifacts
    (or None outside KFP). `output_uri`: also publish to `<output_uri>/<step>/` (standalone steps;
    in the pipeline a publish task does it). `artifact_uri`: where KFP stores the output artifact in
    the pipeline root (on a cluster an object-storage URI, which a TrainJob's nodes can write; the
    default checkpoint root is found from it). `lineage`, when given, gets
    `{step: {"mlflow_run_id", "step_run_key"}}`.
    """
    root = attempts.checkpoint_root(artifact_uri)
    marker = attempts.config_error_marker(root, step)
    attempts.refuse_retried_config_error(marker)
    try:
        return _run_step(step, config, inputs_by_arg, out_path, metrics, report, parent_run_id, output_uri,
                         artifact_uri, lineage, root)
    except ConfigError as exc:
        attempts.record_config_error(marker, exc)
        raise


def _run_step(step: str, config: Mapping[str, Any], inputs_by_arg: Mapping[str, str | None], out_path: str,
              metrics, report, parent_run_id: str, output_uri: str, artifact_uri: str, lineage: dict | None,
              root: str) -> dict:
    from facepipe import edge, storage
    from facepipe.config import to_dict

    if os.environ.get(RUN_PID_ENV):
        _end_with(int(os.environ[RUN_PID_ENV]))
    from facepipe.orchestration.params import decode_config

    record = STEPS[step]
    cfg = decode_config(step, dict(config))
    cfg_dict = to_dict(cfg)
    # Keyed by the inputs as given: a download's temp path differs on every attempt.
    checkpoints = attempts.checkpoint_uri(step, cfg_dict, inputs_by_arg, root)
    derived = bool(checkpoints) and not cfg_dict.get("checkpoint_uri")
    if derived:
        cfg = dataclasses.replace(cfg, checkpoint_uri=checkpoints)
        print(f"[facepipe] {step}: checkpoints go to {checkpoints} (a new attempt resumes from there)",
              file=sys.stderr, flush=True)
    tags = {**edge.run_tags(step, inputs_by_arg, out_path), "facepipe.image": os.environ.get("FACEPIPE_IMAGE", "")}
    child = _ChildRun(step, parent_run_id, tags)
    started = time.time()
    try:
        with contextlib.ExitStack() as stack:
            many_nodes = getattr(cfg, "nodes", 1) > 1  # the nodes read the inputs themselves
            local = stack.enter_context(contextlib.nullcontext({}) if many_nodes
                                        else edge.local_inputs(record, inputs_by_arg))
            out = Path(stack.enter_context(storage.output_dir(out_path)))
            out.mkdir(parents=True, exist_ok=True)
            if many_nodes:
                child.logger.log_params(cfg_dict)  # what edge.call_step does for a step run here
                result = _run_trainjob(record, cfg, inputs_by_arg, out, output_uri, artifact_uri)
                child.logger.log_metrics(edge.flat_metrics(result))
            else:
                result = edge.call_step(record, cfg, local, out, child.logger, sources=inputs_by_arg)
            _record_timing(step, time.time() - started)
            numbers = edge.flat_metrics(result)
            seconds = time.time() - started
            if metrics is not None:
                for k, v in numbers.items():
                    metrics.log_metric(k, v)
                Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
                Path(metrics.path).write_text(json.dumps(numbers, indent=2, sort_keys=True))
            info = {"step": step, "output": str(out_path), "seconds": f"{seconds:.1f}", "mlflow run": child.label}
            report_path = Path(report.path) if report is not None else out / "report.html"
            write_report(report_path, step, cfg_dict, numbers, out, info)
            if child.active:
                child.logger.log_metrics({"step_seconds": seconds})  # the step's own numbers: edge.call_step
                for png in plots(out):
                    child.logger.log_artifact(png, "plots")
                child.logger.log_artifact(report_path, "report")
                for name in ("metrics.json", "report.md"):
                    if (out / name).exists():
                        child.logger.log_artifact(out / name)
                if record.registered_model:
                    _register(child, record, out, local)
            if output_uri:
                target = f"{output_uri.rstrip('/')}/{step}"
                storage.upload(str(out), target)
                if child.active:
                    child.logger.set_tags({"facepipe.published": target})
        if derived:  # the output is complete and holds the model: the resume state of a finished step goes
            storage.remove(checkpoints)
    except BaseException:
        child.finish("FAILED")
        raise
    child.finish("FINISHED")
    if lineage is not None:
        lineage[step] = child.lineage()
    return result


def _run_trainjob(record, cfg, inputs_by_arg: Mapping[str, str | None], work: Path, output_uri: str,
                  artifact_uri: str = "") -> dict:
    """`nodes` > 1: a Kubeflow Trainer TrainJob runs the step; its rank 0 publishes to object storage
    (the output URI, else the task's output artifact in an object-storage pipeline root), from where
    the output comes into `work`; returns the step's metrics."""
    from facepipe import storage
    from facepipe.errors import ConfigError
    from facepipe.orchestration import trainjob

    remote_artifact = artifact_uri if "://" in artifact_uri and not artifact_uri.startswith("file://") else ""
    if not (output_uri or remote_artifact):
        raise ConfigError(f"{record.name}.nodes={cfg.nodes}: the nodes publish the model to object storage; "
                          f"run on a cluster whose pipeline root is object storage, or give an output URI "
                          f"(--output s3://... or obs://...)")
    target = f"{output_uri.rstrip('/')}/{record.name}" if output_uri else remote_artifact.rstrip("/") + "-trainjob"
    trainjob.run(record, cfg, dict(inputs_by_arg), target)
    storage.download(target, work)
    return json.loads((work / "metrics.json").read_text())


def _record_timing(step: str, seconds: float) -> None:
    """Append the step function's own time to $FACEPIPE_TIMINGS (JSON lines; bench/pipeline.py reads it)."""
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "seconds": seconds}) + "\n")


def _register(child: _ChildRun, record, out: Path, local: Mapping[str, str | None]) -> None:
    """The step's output as an MLflow model: a trained model.pt, or the gallery with its two models."""
    files = ({"gallery": str(out), "detector": local.get("detector_path"), "recognizer": local["recognizer_path"]}
             if record.output == "gallery" else {"model": str(out / "model.pt")})
    child.log_model(record.output, files, record.registered_model)


def run_component(step: str, args: Mapping[str, Any], hosts: tuple[str, ...] = ()) -> None:
    """The body of every generated component (`components.component`): its typed inputs -> `run_step`.

    A hosted step (synth in the pack task) writes the artifact its host reads, unless `data_uri`
    names given data, which is copied/downloaded into that artifact instead (its `data_digest`
    input is there for the cache key only: new data at the same URI is a new key). A pipeline
    step's task ends by writing its `lineage` output (`pipeline_run.lineage_of`).
    """
    from facepipe import storage
    from facepipe.edge import flat_metrics
    from facepipe.manifest import MANIFEST, content_digest
    from facepipe.orchestration import pipeline_run
    from facepipe.orchestration.params import step_parameters

    config = lambda s: {p.key: args[p.name] for p in step_parameters(s)}
    record = STEPS[step]
    # A standalone step (recognize) runs outside a pipeline run: it publishes and names its parent itself.
    run = ({} if record.in_pipeline else
           {"parent_run_id": args["mlflow_parent_run_id"], "output_uri": args["output_uri"]})
    paths, steps = {}, {}
    try:
        for hosted in hosts:
            artifact = args[STEPS[hosted].output]
            out = paths[STEPS[hosted].output] = artifact.path
            if args["data_uri"]:
                storage.download(args["data_uri"], out)
            else:
                run_step(hosted, config(hosted), {}, out, artifact_uri=artifact.uri, lineage=steps, **run)
        if record.in_pipeline:
            paths.update({p.artifact: args[p.artifact].path for p in record.inputs if p.artifact not in paths})
            inputs = record.local_inputs(paths)
        else:  # a standalone step: URIs, localized by facepipe.edge
            inputs = {p.arg: args[f"{p.artifact}_uri"] for p in record.inputs}
        result = run_step(step, config(step), inputs, args[record.output].path, metrics=args["metrics"],
                          report=args["report"], artifact_uri=getattr(args[record.output], "uri", ""),
                          lineage=steps, **run)
        if record.in_pipeline:
            # The digest of the tree as read, before it leaves the task as shards.
            images = [paths[STEPS[h].output] for h in hosts if (Path(paths[STEPS[h].output]) / MANIFEST).exists()]
            digest = args.get("data_digest") or (f"sha256:{content_digest(images[0])}" if images else "")
        _shard_hosted_outputs(hosts, paths)
    except ConfigError as exc:  # deterministic: a status of its own, and no traceback to scroll past
        print(f"[facepipe] {step}: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(attempts.EXIT_CONFIG_ERROR) from exc
    if record.in_pipeline:
        outputs = {name: args[name].uri for name in [STEPS[s].output for s in hosts + (step,)] + ["metrics", "report"]}
        Path(args["lineage"]).parent.mkdir(parents=True, exist_ok=True)
        source = (args["data_uri"] if hosts else "") or outputs.get("images", "")
        Path(args["lineage"]).write_text(pipeline_run.lineage_of(steps, outputs, flat_metrics(result), digest,
                                                                 source if digest else ""))


def _shard_hosted_outputs(hosts: tuple[str, ...], paths: Mapping[str, str]) -> None:
    """The raw tree a hosted step wrote (synth's `images`, or the given data) leaves the task as a few
    shards, once the host (pack) has read it: the launcher then uploads, and every later task
    downloads, a handful of objects instead of one per image (facepipe.data.shards)."""
    from facepipe.data.shards import shard_tree

    for hosted in hosts:
        shard_tree(paths[STEPS[hosted].output])
