"""One MLflow parent per pipeline run, ended with the run's real status; cache keys that mean what they say.

Real kfp.local runs of the tiny job (`run_local`, each in its own process) against a sqlite MLflow
store: the parent is made by the run's `begin-run` task and ended by its exit handler `finish-run`,
whether every step executed, every step was cached, a step failed for good, or a step's first
attempt was killed and its retry succeeded. Then new data at the same `data_uri` misses pack's cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

TINY_JOB = PROJECT_ROOT / "jobs" / "tiny.yaml"
RUN = """
import json, sys
from facepipe.orchestration.local import run_local, rerun
kwargs = json.loads(sys.argv[1])
step = kwargs.pop("rerun", None)
try:
    record = rerun(step, **kwargs) if step else run_local(**kwargs)
except Exception as exc:
    print("RUN FAILED:", exc)
"""


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """A runs folder with its sqlite store, and a function running `run_local`/`rerun` there."""
    runs = tmp_path_factory.mktemp("lifecycle-runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FACEPIPE_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{runs / 'mlflow.db'}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

    def run(**kwargs) -> tuple[dict, str]:
        before = set(runs.glob("*/run.json"))
        done = subprocess.run([sys.executable, "-c", RUN, json.dumps({"root": str(runs), **kwargs})],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
        (new,) = set(runs.glob("*/run.json")) - before
        return json.loads(new.read_text()), done.stdout + done.stderr

    return runs, env, run


@pytest.fixture(scope="module")
def first_run(lifecycle):
    runs, _, run = lifecycle
    record, log = run(job=str(TINY_JOB))
    assert record["status"] == "succeeded", log[-4000:]
    return record


def client(lifecycle):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=lifecycle[1]["MLFLOW_TRACKING_URI"])


def parents_of(lifecycle, run_id: str) -> list:
    c = client(lifecycle)
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, f"tags.`facepipe.local_run_id` = '{run_id}' and tags.`facepipe.kind` = 'pipeline'")


def children_of(lifecycle, parent) -> dict[str, list]:
    c = client(lifecycle)
    found: dict[str, list] = {}
    for child in c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        found.setdefault(child.data.tags["facepipe.step"], []).append(child)
    return found


def test_a_run_whose_steps_all_executed_has_one_finished_parent_with_every_parameter(first_run, lifecycle):
    from facepipe.orchestration.params import pipeline_parameters
    from facepipe.steps import PIPELINE_STEPS

    (parent,) = parents_of(lifecycle, first_run["id"])
    assert parent.info.status == "FINISHED"
    assert first_run["mlflow"]["parent_run_id"] == parent.info.run_id
    assert set(parent.data.params) == {p.name for p in pipeline_parameters(PIPELINE_STEPS)}
    tags = parent.data.tags
    assert {tags[f"facepipe.step.{s}"] for s in PIPELINE_STEPS} == {"executed"}
    assert tags["facepipe.input_data_digest"].startswith("sha256:")
    assert "verification.accuracy" in parent.data.metrics
    children = children_of(lifecycle, parent)
    assert set(children) == set(PIPELINE_STEPS)
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in children.values())
    # The outputs come from the record-run task's summary (no pipeline outputs from inside an exit handler).
    assert Path(first_run["outputs"]["recognizer"], "model.pt").exists()


def test_a_run_whose_steps_are_all_cached_ends_with_one_parent_finished(first_run, lifecycle):
    _, _, run = lifecycle
    record, log = run(job=str(TINY_JOB))
    assert record["status"] == "succeeded", log[-4000:]
    assert set(record["steps"].values()) == {"reused"}, record["steps"]
    (parent,) = parents_of(lifecycle, record["id"])
    assert parent.info.status == "FINISHED"
    assert children_of(lifecycle, parent) == {}  # nothing executed
    (first_parent,) = parents_of(lifecycle, first_run["id"])
    produced = {step: runs[0].info.run_id for step, runs in children_of(lifecycle, first_parent).items()}
    tags = parent.data.tags
    for step, run_id in produced.items():
        assert tags[f"facepipe.step.{step}"] == "reused"
        assert tags[f"facepipe.reused_run.{step}"] == run_id  # the run that made the reused artifact
        assert tags[f"facepipe.reused_from.{step}"] == first_run["id"]
    assert record["outputs"]["recognizer"] == first_run["outputs"]["recognizer"]


def test_a_run_whose_step_fails_for_good_ends_failed(first_run, lifecycle):
    _, _, run = lifecycle
    # Valid for the config, refused by the step itself (the file is not in the data).
    record, log = run(job=str(TINY_JOB), sets=['train_recognition.val_targets=["missing.bin"]'])
    assert record["status"] == "failed", log[-4000:]
    assert record["steps"]["train-recognition"] == "failed"
    (parent,) = parents_of(lifecycle, record["id"])
    assert parent.info.status == "FAILED"
    tags = parent.data.tags
    assert tags["facepipe.step.train_recognition"] == "failed"
    assert tags["facepipe.step.pack"] == "reused" and tags["facepipe.step.build_gallery"] == "not run"
    (failed,) = children_of(lifecycle, parent)["train_recognition"]
    assert failed.info.status == "FAILED"


def _kill_first_attempt(marker: str, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first step process whose command line holds `marker` (its executor input)."""
    while not stop.is_set() and not killed:
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            # The step's own python (`-m kfp.dsl.executor_main` as separate arguments), not the `sh -c`
            # around it, whose death would leave the step running to its end.
            if "\0kfp.dsl.executor_main\0" in cmdline and marker in cmdline:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
                return
        time.sleep(0.02)


def test_a_run_whose_first_attempt_fails_and_retry_succeeds_ends_finished(first_run, lifecycle, tmp_path):
    """kfp.local honours the spec's retry policy (`retries=True`); the backoff is cut to 1 s here."""
    from facepipe.orchestration.local import PipelineSpec

    _, _, run = lifecycle
    spec = PipelineSpec(PROJECT_ROOT / "pipeline.yaml")
    text = (PROJECT_ROOT / "pipeline.yaml").read_text().replace("backoffDuration: 60s", "backoffDuration: 1s")
    assert "backoffDuration: 1s" in text and "evaluate" in spec.tasks
    quick = tmp_path / "pipeline.yaml"
    quick.write_text(text)
    stop, killed = threading.Event(), []
    # Its executor input names its own output file; other tasks' inputs name evaluate's parameters too.
    watcher = threading.Thread(target=_kill_first_attempt, args=("/evaluate/executor_output.json", stop, killed))
    watcher.start()
    try:
        record, log = run(rerun="evaluate", from_run=first_run["id"], pipeline=str(quick), retries=True)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the first attempt of evaluate was never seen"
    assert record["status"] == "succeeded", log[-4000:]  # so kfp.local ran evaluate again
    (parent,) = parents_of(lifecycle, record["id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["facepipe.step.evaluate"] == "executed"
    # The retry's run FINISHED; the killed attempt's, if it got as far as starting one, is KILLED.
    statuses = sorted(r.info.status for r in children_of(lifecycle, parent)["evaluate"])
    assert statuses in (["FINISHED"], ["FINISHED", "KILLED"]), statuses


def test_new_data_at_the_same_data_uri_misses_packs_cache(synth_small, tmp_path):
    """The data-digest task feeds pack the given data's manifest digest: same data, cache hit; new data
    at the same URI, a new key (before, the key was the URI string and the hit was stale)."""
    import shutil

    import kfp.local
    from kfp import dsl

    from components.pack.component import pack
    from facepipe.manifest import MANIFEST, write_manifest
    from facepipe.orchestration.params import step_parameters
    from pipeline.run_tasks import data_digest_component

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    values = {p.name: p.default for s in ("synth", "pack") for p in step_parameters(s)} | {
        "pack__size": 32, "pack__workers": 1}

    def packing(data_uri):
        digest = data_digest_component()(data_uri=data_uri).set_caching_options(False)
        pack(**values, data_uri=data_uri, data_digest=digest.output)

    packing.__annotations__ = {"data_uri": str}  # a type, not this module's postponed "str"
    packing = dsl.pipeline(name="digest-cache")(packing)

    root = tmp_path / "root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True,
                   cache_root=str(tmp_path / "cache"))

    def pack_executed() -> bool:
        before = set(root.glob("digest-cache-*"))
        packing(data_uri=data.as_uri())
        (new,) = set(root.glob("digest-cache-*")) - before
        return (new / "pack" / "executor_output.json").exists()

    assert pack_executed()
    assert not pack_executed()  # same data: reused
    kind = json.loads((data / MANIFEST).read_text())["kind"]
    shutil.rmtree(sorted((data / "faces").iterdir())[0])  # new data at the same URI
    write_manifest(data, kind)
    assert pack_executed()


def _cluster_env(monkeypatch, **env):
    from facepipe.orchestration import attempts, component_runtime, pipeline_run

    for name in (component_runtime.SPOOL_ENV, component_runtime.PARENT_ENV, attempts.CHECKPOINT_ROOT_ENV,
                 pipeline_run.LOCAL_RUN_ENV, pipeline_run.KFP_RUN_ENV, pipeline_run.KFP_MLFLOW_RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_on_a_cluster_a_failed_first_attempt_leaves_the_parent_to_the_finalizer(mlflow_env, synth_small, tmp_path,
                                                                                 monkeypatch):
    """What KFP pods do, task by task: begin-run makes the parent, tagged with the run id from the pod
    label (no task input); a step's failed first attempt ends only its own run; finish-run, given the
    final status KFP passes the exit handler, ends the parent."""
    from facepipe.orchestration import pipeline_run
    from facepipe.orchestration.component_runtime import run_step
    from facepipe.tracking import find_runs, get_run

    _cluster_env(monkeypatch, FACEPIPE_KFP_RUN_ID="kfp-run-retried")
    parent = pipeline_run.begin({"pack__size": 64, "output_uri": ""}, "cluster")
    with pytest.raises(Exception):  # the first attempt: its input is not there (yet)
        run_step("pack", {"size": 64, "workers": 1}, {"src": str(tmp_path / "not-yet")}, str(tmp_path / "a"))
    assert get_run(parent).info.status == "RUNNING"
    run_step("pack", {"size": 64, "workers": 1}, {"src": str(synth_small / "faces")}, str(tmp_path / "b"))
    assert get_run(parent).info.status == "RUNNING"  # no step ends the parent
    assert pipeline_run.begin({"pack__size": 64, "output_uri": ""}, "cluster") == parent  # a retried begin-run
    assert pipeline_run.finish("SUCCEEDED", "", ("pack",)) == "FINISHED"
    run = get_run(parent)
    assert run.info.status == "FINISHED" and run.data.params["pack__size"] == "64"
    assert sorted(c.info.status for c in find_runs(parent_id=parent)) == ["FAILED", "FINISHED"]
    (only,) = find_runs(tags={"facepipe.kfp_run_id": "kfp-run-retried", "facepipe.kind": "pipeline"})
    assert only.info.run_id == parent
    # A run whose steps failed for good: the finalizer gets FAILED.
    _cluster_env(monkeypatch, FACEPIPE_KFP_RUN_ID="kfp-run-failed")
    failed = pipeline_run.begin({}, "cluster")
    assert pipeline_run.finish("FAILED", "Task pack failed.", ("pack", "evaluate")) == "FAILED"
    run = get_run(failed)
    assert run.info.status == "FAILED" and run.data.tags["facepipe.step.evaluate"] == "not run"


def test_under_kfps_own_mlflow_runs_the_steps_nest_in_them(mlflow_env, synth_small, tmp_path, monkeypatch):
    """KFP with MLflow on (kubeflow/pipelines#13441) makes a run per pipeline run and a nested run per
    task, given to the task as MLFLOW_RUN_ID: the step's run nests under its task's run, and KFP's
    pipeline run is the parent that begin-run fills in (KFP ends it, finish-run only tags it)."""
    from facepipe import tracking
    from facepipe.orchestration import pipeline_run
    from facepipe.orchestration.component_runtime import run_step

    kfp_root = tracking.start_pipeline_run("kfp-owned", {"kfp.run": "1"})
    kfp_task = tracking.start_step_run(kfp_root, "pack-task")
    _cluster_env(monkeypatch, FACEPIPE_KFP_RUN_ID="kfp-run-mlflow", MLFLOW_RUN_ID=kfp_task)
    assert pipeline_run.begin({"pack__size": 64}, "ignored") == kfp_root
    run_step("pack", {"size": 64, "workers": 1}, {"src": str(synth_small / "faces")}, str(tmp_path / "out"))
    (step,) = tracking.find_runs(parent_id=kfp_task)
    assert step.data.tags["facepipe.step"] == "pack"
    pipeline_run.finish("SUCCEEDED", "", ("pack",))
    root = tracking.get_run(kfp_root)
    assert root.info.status == "RUNNING" and root.data.params["pack__size"] == "64"
    assert root.data.tags["facepipe.kfp_run_id"] == "kfp-run-mlflow"
