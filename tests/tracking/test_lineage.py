"""MLflow lineage against a real `mlflow server` (sqlite store, artifacts in S3): parent and child runs,
metrics by step, artifacts landing in S3, registered model versions, param diffs, no secrets."""

from __future__ import annotations

import json

import pytest

from facepipe import tracking
from tests.fixtures.services import SECRET_KEY


@pytest.fixture
def client(mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    # The secret is in the environment, as on a real cluster: redaction must keep it out.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return MlflowClient(mlflow_env.uri)


def s3_keys(server, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)  # > 1,000 keys
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_pipeline_run_with_step_children(client, mlflow_env, tmp_path):
    parent = tracking.start_pipeline_run("lineage", {
        "facepipe.kfp_run_id": "kfp-run-123", "facepipe.pipeline_digest": "sha256:" + "a" * 64,
        "facepipe.image.train": "swr.example/facepipe/train@sha256:" + "b" * 64,
        "facepipe.input_data_digest": "sha256:" + "c" * 64,
        "aws_secret_access_key": SECRET_KEY, "facepipe.note": f"endpoint key {SECRET_KEY}"})
    train = tracking.start_step_run(parent, "train_recognition", {
        "backbone": "r18", "lr": 0.1, "epochs": 3, "obs_secret_access_key": SECRET_KEY,
        "data": f"s3://bucket/data?sig={SECRET_KEY}"})
    logger = tracking.MlflowLogger(train)
    for epoch, loss in enumerate([2.0, 1.2, 0.7]):
        logger.log_metrics({"loss": loss, "accuracy": 1 - loss / 3}, step=epoch)
    plot = tmp_path / "loss.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    logger.log_artifact(plot, "plots")
    tracking.end_run(train)
    evaluate = tracking.start_step_run(parent, "evaluate", {"far": 1e-3})
    tracking.end_run(evaluate)
    tracking.end_run(parent)

    p = client.get_run(parent)
    assert p.data.tags["facepipe.kfp_run_id"] == "kfp-run-123"
    assert p.data.tags["facepipe.git_commit"], "the git commit is filled in"
    assert p.data.tags["facepipe.image.train"].endswith("b" * 64)
    assert p.data.tags["facepipe.input_data_digest"] == "sha256:" + "c" * 64
    assert p.info.run_name == "kfp-run-123" and p.info.status == "FINISHED"

    children = tracking.find_runs("lineage", parent_id=parent)
    assert sorted(r.data.tags["facepipe.step"] for r in children) == ["evaluate", "train_recognition"]
    t = client.get_run(train)
    assert t.data.params["backbone"] == "r18" and t.data.params["lr"] == "0.1"
    history = client.get_metric_history(train, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 2.0), (1, 1.2), (2, 0.7)]

    assert [a.path for a in client.list_artifacts(train, "plots")] == ["plots/loss.png"]
    keys = s3_keys(mlflow_env.s3, mlflow_env.artifact_bucket)
    assert any(k.endswith(f"{train}/artifacts/plots/loss.png") for k in keys), keys

    for run in (p, t):
        everything = json.dumps([run.data.params, run.data.tags])
        assert SECRET_KEY not in everything
    assert t.data.params["obs_secret_access_key"] == "***"
    assert p.data.tags["aws_secret_access_key"] == "***"


def test_registered_model_version_is_linked_to_its_run(client, tmp_path):
    parent = tracking.start_pipeline_run("registry", {"facepipe.local_run_id": "local-1"})
    versions = []
    for attempt in range(2):
        run = tracking.start_step_run(parent, "train_detection", {"epochs": attempt + 1})
        model = tmp_path / f"m{attempt}" / "model.pt"
        model.parent.mkdir()
        model.write_bytes(b"weights-%d" % attempt)
        tracking.MlflowLogger(run).log_artifact(model, "model")
        versions.append((run, tracking.register_model(run, "model", "facepipe-detector-test")))
        tracking.end_run(run)

    (run0, v0), (run1, v1) = versions
    assert (int(v0.version), int(v1.version)) == (1, 2)
    stored = client.get_model_version("facepipe-detector-test", v1.version)
    assert stored.run_id == run1 and stored.source.endswith(f"{run1}/artifacts/model")
    assert client.get_run(run1).data.tags["facepipe.registered_model"] == "facepipe-detector-test/2"
    local = client.download_artifacts(run0, "model/model.pt", str(tmp_path / "back"))
    assert open(local, "rb").read() == b"weights-0"


def test_two_runs_compared_by_params(client):
    a = tracking.start_step_run(None, "train_recognition", {"lr": 0.1, "backbone": "r18", "epochs": 5})
    b = tracking.start_step_run(None, "train_recognition", {"lr": 0.01, "backbone": "r18", "margin": 0.5})
    assert tracking.param_diff(a, b) == {"epochs": ("5", None), "lr": ("0.1", "0.01"), "margin": (None, "0.5")}
    found = {r.info.run_id for r in tracking.find_runs(step="train_recognition")}
    assert {a, b} <= found
    assert tracking.find_runs("no-such-experiment") == []

    wide = tracking.start_step_run(None, "pack", {f"p{i:03d}": i for i in range(150)})  # > one batch
    assert client.get_run(wide).data.params["p149"] == "149" and len(client.get_run(wide).data.params) == 150


def test_default_tracking_uri_is_a_sqlite_store_in_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FACEPIPE_PROJECT_DIR", str(tmp_path))
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path}/runs/mlflow.db"
    parent = tracking.start_pipeline_run("local", {"facepipe.local_run_id": "r1"})
    step = tracking.start_step_run(parent, "pack", {"size": 112})
    (tmp_path / "report.md").write_text("# pack")
    tracking.MlflowLogger(step).log_artifact(tmp_path / "report.md")
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert list((tmp_path / "runs" / "artifacts").rglob("report.md")), "artifacts sit beside the database"
    assert [r.info.run_id for r in tracking.find_runs("local", parent_id=parent)] == [step]
