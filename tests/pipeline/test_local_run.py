"""The whole tiny pipeline through kfp.local against real S3/OBS-compatible servers and a real MLflow server.

Given data comes from `s3://` (nanio, SigV4-checking), outputs are also published to `obs://`
(moto, through the Huawei OBS SDK in v4 mode), and every run is tracked by `mlflow server`
(sqlite + artifacts in S3). Then `facepipe rerun` of the last step executes only that step, and
the secret keys appear nowhere: not in logs, run records, the spec, or MLflow params and tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.pipeline import TASKS
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

FACEPIPE = [sys.executable, "-m", "facepipe.cli"]
TINY_JOB = PROJECT_ROOT / "jobs" / "tiny.yaml"


def facepipe(*args, env, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(FACEPIPE + list(args), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert done.returncode == 0, f"facepipe {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def services_env(s3_server, obs_server, mlflow_server, tmp_path_factory):
    """Environment for the `facepipe` processes: S3 (nanio), OBS (moto), MLflow server; tiny data in S3."""
    from facepipe import storage
    from facepipe.config import load_config
    from facepipe.data.synth import SynthConfig, synthesize

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "OBS_", "MLFLOW_", "S3_ENDPOINT", "FACEPIPE_"))}
    env.update(s3_server.aws_env())
    env.update(obs_server.obs_env())
    env.update(MLFLOW_TRACKING_URI=mlflow_server.uri, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    s3_server.create_bucket("facepipe-data")
    obs_server.create_bucket("facepipe-out")
    data = tmp_path_factory.mktemp("given-data")
    synthesize(load_config(SynthConfig, TINY_JOB, section="synth"), data)
    with s3_server.env():
        storage.upload(data, "s3://facepipe-data/tiny")
    return env


@pytest.fixture(scope="module")
def first_run(services_env, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    done = facepipe("run", "--job", str(TINY_JOB), "--data", "s3://facepipe-data/tiny",
                    "--output", "obs://facepipe-out/first", "--runs-dir", str(runs), "--experiment", "tiny-e2e",
                    env=services_env)
    records = sorted(runs.glob("*/run.json"))
    assert len(records) == 1
    return runs, json.loads(records[0].read_text()), done


def mlflow_client(services_env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=services_env["MLFLOW_TRACKING_URI"])


def test_every_step_executes_and_outputs_are_published_to_obs(first_run, obs_server):
    from facepipe import storage

    runs, record, done = first_run
    assert record["status"] == "succeeded"
    assert set(record["steps"].values()) == {"executed"}, record["steps"]
    for name in ("detector", "recognizer", "gallery"):
        assert Path(record["outputs"][name], "manifest.json").exists(), name
    assert Path(record["outputs"]["recognizer"], "model.pt").exists()
    # The given tree moved on as one shard per folder, read back by detection, gallery and evaluate.
    images = Path(record["outputs"]["images"])
    assert {"faces.tar", "detection.tar"} <= {p.name for p in images.iterdir()}
    assert not [p for p in images.iterdir() if p.is_dir()]
    with obs_server.env():
        for step in TASKS:
            assert storage.is_complete(f"obs://facepipe-out/first/{step}"), step
    metrics = json.loads(Path(record["outputs"]["metrics"]).read_text())
    for key in ("verification.accuracy", "identification.rank1", "detection.ap50"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # The summary says where things are.
    assert record["outputs"]["recognizer"] in done.stdout and record["mlflow"]["parent_run_id"] in done.stdout


def test_mlflow_parent_child_runs_and_registered_models(first_run, services_env):
    runs, record, _ = first_run
    client = mlflow_client(services_env)
    parent = client.get_run(record["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["facepipe.local_run_id"] == record["id"]
    assert tags["facepipe.pipeline_digest"].startswith("sha256:")
    assert tags["facepipe.input_data_digest"].startswith("sha256:")
    assert tags["facepipe.git_commit"]
    # The runs table's Dataset column for the parent: the pipeline's input images (record-run).
    (dataset,) = [d.dataset for d in parent.inputs.dataset_inputs if d.dataset.name == "images"]
    assert tags["facepipe.input_data_digest"].startswith("sha256:" + dataset.digest[:20])
    assert json.loads(dataset.source)["uri"] == (record["arguments"].get("data_uri") or record["outputs"]["images"])
    assert parent.data.params["train_recognition__backbone"] == "mobilefacenet"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_step = {c.data.tags["facepipe.step"]: c for c in children}
    assert set(TASKS) <= set(by_step)
    recognition = by_step["train_recognition"]
    assert recognition.info.status == "FINISHED"
    assert recognition.data.params["backbone"] == "mobilefacenet"
    # Metrics by step (the training loop's own logging through the component's logger).
    history = client.get_metric_history(recognition.info.run_id, "train.loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(recognition.info.run_id)}
    assert {"model", "report"} <= artifacts
    for name, step in (("facepipe-recognizer", "train_recognition"), ("facepipe-detector", "train_detection")):
        versions = client.search_model_versions(f"name = '{name}'")
        assert any(v.run_id == by_step[step].info.run_id for v in versions), name


def test_rerun_evaluate_executes_only_evaluate(first_run, services_env):
    runs, record, _ = first_run
    done = facepipe("rerun", "evaluate", "--from", record["id"], "--set", "batch_size=8",
                    "--runs-dir", str(runs), "--experiment", "tiny-e2e", env=services_env)
    rerun = max((json.loads(p.read_text()) for p in runs.glob("*/run.json")), key=lambda r: r["start"] + r["id"])
    assert rerun["id"] != record["id"]
    assert rerun["steps"]["evaluate"] == "executed"
    assert {s for t, s in rerun["steps"].items() if t != "evaluate"} == {"reused"}, rerun["steps"]
    # Upstream artifacts are the earlier run's, not recomputed.
    assert rerun["outputs"]["recognizer"] == record["outputs"]["recognizer"]
    assert rerun["outputs"]["gallery"] == record["outputs"]["gallery"]
    assert rerun["outputs"]["evaluation"] != record["outputs"]["evaluation"]
    assert rerun["arguments"]["evaluate__batch_size"] == 8
    parent = mlflow_client(services_env).get_run(rerun["mlflow"]["parent_run_id"])
    assert parent.data.tags["facepipe.rerun_of"] == record["id"]
    assert "reused" in done.stdout
    listing = facepipe("runs", "--runs-dir", str(runs), env=services_env).stdout
    assert record["id"] in listing and rerun["id"] in listing and "reused" in listing


def test_bad_set_names_list_the_valid_ones(first_run, services_env):
    runs, record, _ = first_run
    done = facepipe("run", "--job", str(TINY_JOB), "--set", "train_recognition.epoch=2", "--runs-dir", str(runs),
                    env=services_env, check=False)
    assert done.returncode == 2
    assert "unknown key 'epoch'" in done.stderr and "epochs" in done.stderr
    done = facepipe("rerun", "build_galery", "--from", record["id"], "--runs-dir", str(runs), env=services_env,
                    check=False)
    assert done.returncode == 2 and "build_gallery" in done.stderr
    done = facepipe("rerun", "build_gallery", "--from", record["id"], "--set", "train_recognition.epochs=3",
                    "--runs-dir", str(runs), env=services_env, check=False)
    assert done.returncode == 2 and "upstream" in done.stderr


def test_credentials_appear_nowhere(first_run, services_env, s3_server, obs_server):
    runs, record, done = first_run
    secrets = {s3_server.secret_key, obs_server.secret_key}
    texts = [done.stdout, done.stderr, (PROJECT_ROOT / "pipeline.yaml").read_text()]
    texts += [p.read_text(errors="replace") for p in runs.rglob("*")
              if p.is_file() and p.suffix in (".json", ".yaml", ".html", ".txt", ".md", ".log")]
    client = mlflow_client(services_env)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for secret in secrets:
        assert not any(secret in t for t in texts), "a secret key leaked"
