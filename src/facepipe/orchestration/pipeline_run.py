"""The pipeline run's own light tasks: the data digest, the MLflow parent (begin, record, finish) and publishing.

One MLflow parent run per pipeline run, the same locally (kfp.local) and on a KFP cluster:

- `begin` (the first task, never cached) creates it, tagged with the pipeline run's id
  (`facepipe.kfp_run_id` from the pod's `pipeline/runid` label, or `facepipe.local_run_id` from
  `facepipe run`), and logs every pipeline parameter. When KFP itself tracks the run in MLflow
  (kubeflow/pipelines#13441: a task gets `MLFLOW_RUN_ID`, its own run nested under KFP's run of the
  pipeline) KFP's pipeline run is the parent: `begin` tags it and logs the parameters there instead.
- The steps find the parent by that id (`find_parent`), never by a task input, which would change
  their cache keys on every run.
- `record` (after the steps) tags the parent with each step `executed` or `reused` and, for a reused
  step, the MLflow run that produced its artifact, from the `lineage` output parameter every step
  task writes (`lineage_of`); kept in the cache with the artifacts, it names the run that made them.
- `finish` (the `dsl.ExitHandler` task: it runs also when a step failed, and when every step was
  cached) ends the parent with the pipeline's real status (`PipelineTaskFinalStatus`). No step ever
  ends it, so a failed first attempt that a retry repairs leaves it RUNNING until `finish`.

Without MLFLOW_TRACKING_URI the tracking parts do nothing; `record` still writes its summary for
`facepipe run` when FACEPIPE_RUN_SUMMARY names a file (kfp.local returns no pipeline outputs from
inside an exit handler, so the runner learns the output artifacts from it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

from facepipe.orchestration.attempts import KFP_RUN_ENV  # on a cluster: the pod's `pipeline/runid` label

LOCAL_RUN_ENV = "FACEPIPE_LOCAL_RUN_ID"  # set by `facepipe run` for its tasks
SUMMARY_ENV = "FACEPIPE_RUN_SUMMARY"     # set by `facepipe run`: where `record` writes the run's outputs
KFP_MLFLOW_RUN_ENV = "MLFLOW_RUN_ID"     # KFP's own MLflow run of this task (kubeflow/pipelines#13441)
KFP_MLFLOW_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_ID"
PIPELINE_KIND = "pipeline"
STEP_RUN_KEY_TAG = "facepipe.step_run_key"
# KFP's final states (PipelineTaskFinalStatus.state) -> MLflow run status.
FINAL_STATUS = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED", "CANCELING": "KILLED"}


def run_identity() -> tuple[str, str]:
    """(tag, id) of the pipeline run this task belongs to, or ("", "") outside one."""
    if os.environ.get(KFP_RUN_ENV):
        return "facepipe.kfp_run_id", os.environ[KFP_RUN_ENV]
    if os.environ.get(LOCAL_RUN_ENV):
        return "facepipe.local_run_id", os.environ[LOCAL_RUN_ENV]
    return "", ""


def tracking_on() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _kfp_pipeline_run() -> str:
    """KFP's MLflow run of the pipeline: the parent of this task's run (or that run, unnested)."""
    from facepipe import tracking

    task_run = os.environ[KFP_MLFLOW_RUN_ENV]
    return tracking.get_run(task_run).data.tags.get(tracking.PARENT_TAG) or task_run


def find_parent(identity: tuple[str, str] | None = None) -> str:
    """The parent MLflow run of the pipeline run this task is in (or of `identity`: (tag, run id));
    "" when none: tracking off, outside a pipeline run, or not made yet."""
    from facepipe import tracking

    if not tracking_on():
        return ""
    if os.environ.get(KFP_MLFLOW_RUN_ENV) and identity is None:
        return _kfp_pipeline_run()
    tag, run_id = identity or run_identity()
    if not run_id:
        return ""
    found = tracking.find_runs(tags={tag: run_id, "facepipe.kind": PIPELINE_KIND}, max_results=1)
    return found[0].info.run_id if found else ""


def begin(parameters: Mapping[str, Any], experiment: str = "", nest_under: str = "") -> str:
    """Create (or, for a retried attempt, find) the pipeline run's parent and log every parameter."""
    from facepipe import tracking
    from facepipe.orchestration.images import image_digests

    if not tracking_on():
        print("[facepipe] MLFLOW_TRACKING_URI is not set: this run is not tracked", file=sys.stderr)
        return ""
    tag, run_id = run_identity()
    tags = {tag: run_id, **({tracking.PARENT_TAG: nest_under} if nest_under else {}),
            **{f"facepipe.image.{k}": v for k, v in image_digests().items()}}
    tags = {k: v for k, v in tags.items() if k and v}
    parent = find_parent()
    if parent:  # KFP's run of the pipeline, or the one an earlier attempt of this task made
        tracking.MlflowLogger(parent).set_tags({"facepipe.kind": PIPELINE_KIND, **tags})
    else:
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or tracking.DEFAULT_EXPERIMENT
        parent = tracking.start_pipeline_run(name, tags)
    tracking.MlflowLogger(parent).log_params(dict(parameters))
    print(f"[facepipe] MLflow parent run {parent}", file=sys.stderr)
    return parent


# ------------------------------------------------------------------------------- step lineage

def new_step_run_key() -> str:
    """Names a step's run before it has an MLflow id (a spooled run gets one only when replayed)."""
    return uuid.uuid4().hex


def lineage_of(task_steps: Mapping[str, Mapping[str, Any]], outputs: Mapping[str, str],
               metrics: Mapping[str, float], data_digest: str = "", data_source: str = "") -> str:
    """A step task's `lineage` output: the pipeline run that made its artifacts, its steps' runs,
    its output artifacts' URIs, its final numbers and (pack) the digest and URI of the data it read."""
    _, run_id = run_identity()
    return json.dumps({"pipeline_run": run_id, "steps": dict(task_steps), "outputs": dict(outputs),
                       "metrics": dict(metrics), "data_digest": data_digest, "data_source": data_source},
                      sort_keys=True)


def _producing_run(step: Mapping[str, Any]) -> str:
    """The MLflow run id of a step run described in a lineage (looked up by key when it was spooled)."""
    from facepipe import tracking

    if step.get("mlflow_run_id"):
        return step["mlflow_run_id"]
    if not step.get("step_run_key"):
        return ""
    found = tracking.find_runs(tags={STEP_RUN_KEY_TAG: step["step_run_key"]}, max_results=1)
    return found[0].info.run_id if found else ""


def run_url(run_id: str) -> str:
    """The MLflow UI page of a run, where the tracking URI is a server; "" for a local store."""
    from facepipe import tracking

    uri = tracking.tracking_uri()
    if not uri.startswith(("http://", "https://")) or not run_id:
        return ""
    return f"{uri.rstrip('/')}/#/experiments/{tracking.get_run(run_id).info.experiment_id}/runs/{run_id}"


def record(lineages: Mapping[str, str], last_task: str) -> dict:
    """Tag the parent with each step executed or reused (a reused one linked to the run that made its
    artifact), the data digest (also as the parent's `images` dataset input) and the last task's
    numbers; write the summary for `facepipe run`."""
    _, current = run_identity()
    parent = find_parent()
    summary: dict[str, Any] = {"steps": {}, "outputs": {}, "data_digest": "", "data_source": ""}
    links: dict[str, str] = {}
    numbers: dict[str, float] = {}
    for task, text in lineages.items():
        body = json.loads(text)
        summary["outputs"].update(body["outputs"])
        summary["data_digest"] = summary["data_digest"] or body.get("data_digest", "")
        summary["data_source"] = summary["data_source"] or body.get("data_source", "")
        reused = not current or body["pipeline_run"] != current
        for step, info in body["steps"].items():
            summary["steps"][step] = "reused" if reused else "executed"
            if reused and parent:
                producer = _producing_run(info)
                links.update({f"facepipe.reused_run.{step}": producer, f"facepipe.reused_run_url.{step}": run_url(producer),
                              f"facepipe.reused_from.{step}": body["pipeline_run"]})
        if task == last_task:
            numbers = body.get("metrics", {})
    if parent:
        from facepipe import tracking

        logger = tracking.MlflowLogger(parent)
        logger.set_tags({**{f"facepipe.step.{s}": state for s, state in summary["steps"].items()},
                         **{k: v for k, v in links.items() if v}, "facepipe.input_data_digest": summary["data_digest"]})
        if summary["data_digest"]:  # the runs table's Dataset column: the data the whole run trained and evaluated on
            logger.log_input("images", summary["data_source"] or summary["outputs"].get("images", ""),
                             summary["data_digest"], "pipeline", {"manifest": "yes"})
        if numbers:
            logger.log_metrics(numbers)
    if os.environ.get(SUMMARY_ENV):
        path = Path(os.environ[SUMMARY_ENV])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return summary


def finish(state: str, error: str = "", task_names: tuple[str, ...] = ()) -> str:
    """End the parent with the pipeline's final state; returns the MLflow status ("" untracked).

    After a failure `record` did not run: the steps that ran are tagged from their child runs
    (their own status), the others `not run`. KFP's own parent (MLFLOW_RUN_ID) is ended by KFP.
    """
    from facepipe import tracking

    parent = find_parent()
    if not parent:
        print(f"[facepipe] pipeline {state}; no MLflow parent run to end", file=sys.stderr)
        return ""
    status = FINAL_STATUS.get(state.upper(), "FAILED")
    logger = tracking.MlflowLogger(parent)
    tags = {"facepipe.status": state.lower()}
    if error:
        tags["facepipe.error"] = error[:2000]
    run = tracking.get_run(parent)
    known = run.data.tags
    if status != "FINISHED":
        children = {c.data.tags.get(tracking.STEP_TAG): c.info.status for c in tracking.find_runs(parent_id=parent)}
        for step in task_names:
            if f"facepipe.step.{step}" not in known:
                tags[f"facepipe.step.{step}"] = {"FINISHED": "executed", None: "not run"}.get(
                    children.get(step), "failed")
    logger.set_tags(tags)
    if run.info.start_time:
        import time

        logger.log_metrics({"pipeline_seconds": round(time.time() - run.info.start_time / 1000, 2)})
    if not os.environ.get(KFP_MLFLOW_RUN_ENV):
        tracking.end_run(parent, status)
    print(f"[facepipe] MLflow parent run {parent}: {status}", file=sys.stderr)
    return status


# ------------------------------------------------------------------------------ data and outputs

def data_digest(data_uri: str) -> str:
    """What the given data holds, for pack's cache key: the digest of its manifest's file list (the
    same as `manifest.content_digest` of the copy); without a manifest, of its files' names and sizes."""
    from facepipe import storage
    from facepipe.manifest import MANIFEST

    if not data_uri:
        return ""  # synthesized: the synth__* parameters say what it is
    manifest = f"{data_uri.rstrip('/')}/{MANIFEST}"
    if storage.exists(manifest):
        with storage.localize(manifest, quiet=True) as path:
            listing: Any = json.loads(Path(path).read_text()).get("files", {})
    else:
        print(f"[facepipe] {data_uri}: no {MANIFEST}; its cache key is its files' names and sizes "
              f"(`facepipe storage cp DIR URI` writes one)", file=sys.stderr)
        listing = sorted((e.name, e.size) for e in storage.ls(data_uri, recursive=True))
    return "sha256:" + hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def publish(local_dir: str, output_uri: str, step: str) -> str:
    """Copy one step's output artifact to `<output_uri>/<step>/` (manifest last); "" without a target."""
    from facepipe import storage

    if not output_uri:
        return ""
    target = f"{output_uri.rstrip('/')}/{step}"
    storage.upload(local_dir, target)
    print(f"[facepipe] published {step} to {target}", file=sys.stderr)
    return target
