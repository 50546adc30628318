"""pipeline.yaml as a cluster runs it: every task's `sh -ec ...` command in its image, pulled from the
registry the tier just pushed to (kfp.local's DockerRunner), outputs on S3, tracking on an MLflow server.

Reuses the tier's images (`pushed`); nothing is built here. Then a rerun of evaluate with one changed
parameter executes only evaluate, a step in its container sees hostile string values exactly, and a
training killed (SIGKILL) in its container resumes from the checkpoint it uploaded to S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.containers.harness import PROJECT_ROOT, TIMINGS

pytestmark = pytest.mark.containers

TINY_JOB = PROJECT_ROOT / "jobs" / "tiny.yaml"
STEPS_RUN = ("synth", "pack", "train_detection", "train_recognition", "build_gallery", "evaluate")


@pytest.fixture(scope="module")
def docker_env(pushed, sandbox, s3_server, mlflow_server, tmp_path_factory):
    env = {k: v for k, v in sandbox.env.items() if not k.startswith(("AWS_", "OBS_", "MLFLOW_", "FACEPIPE_"))}
    env.update(s3_server.aws_env())
    env.update(MLFLOW_TRACKING_URI=mlflow_server.uri, FACEPIPE_IMAGES_LOCK=str(pushed["lock"]),
               FACEPIPE_RUNS_DIR=str(tmp_path_factory.mktemp("docker-runs")), OMP_NUM_THREADS="2")
    s3_server.create_bucket("fp-docker")
    return env


def facepipe(env, *args) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "facepipe.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    TIMINGS[f"facepipe {args[0]} --runner docker"] = f"{time.monotonic() - started:.0f} s"
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


def latest_record(env) -> dict:
    runs = Path(env["FACEPIPE_RUNS_DIR"])
    return max((json.loads(p.read_text()) for p in runs.glob("*/run.json")), key=lambda r: r["start"] + r["id"])


def run_logs(env, record: dict) -> str:
    """Every log file of a run (runs/<id>/logs/*.log): the steps' own output lands there, not on stdout."""
    return "".join(p.read_text() for p in (Path(env["FACEPIPE_RUNS_DIR"]) / record["id"] / "logs").glob("*.log"))


def children(env, parent_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_id)
    found = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {c.data.tags["facepipe.step"]: c for c in found}


@pytest.fixture(scope="module")
def first_run(docker_env):
    done = facepipe(docker_env, "run", "--runner", "docker", "--job", str(TINY_JOB),
                    "--output", "s3://fp-docker/first", "--experiment", "docker-e2e")
    return latest_record(docker_env), done


def test_tiny_pipeline_runs_every_step_in_its_pushed_image(first_run, docker_env, pushed, s3_server):
    import yaml

    from facepipe import storage

    record, done = first_run
    assert record["status"] == "succeeded" and record["runner"] == "docker"
    assert set(record["steps"].values()) == {"executed"}, record["steps"]
    spec = next(yaml.safe_load_all((Path(docker_env["FACEPIPE_RUNS_DIR"]) / record["id"] / "pipeline.yaml").read_text()))
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert used == {e["reference"] for e in pushed["body"]["images"].values()}
    logs = run_logs(docker_env, record)
    for ref in used:  # kfp's DockerRunner names the image it starts each task from, into that task's log
        assert f"image {ref!r}" in logs, ref
    assert "Got executor_input" in (Path(docker_env["FACEPIPE_RUNS_DIR"]) / record["id"] / "logs" / "pack.log").read_text()
    assert len((done.stdout + done.stderr).splitlines()) < 60
    with s3_server.env():
        for step in STEPS_RUN[1:]:
            assert storage.is_complete(f"s3://fp-docker/first/{step}"), step
    metrics = json.loads(Path(record["outputs"]["metrics"]).read_text())
    assert 0.0 <= metrics["verification.accuracy"] <= 1.0
    # The steps logged to the MLflow server themselves, from inside their containers.
    runs = children(docker_env, record["mlflow"]["parent_run_id"])
    assert set(runs) == set(STEPS_RUN), sorted(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["train_recognition"].data.params["backbone"] == "mobilefacenet"


def test_rerun_of_evaluate_in_containers_executes_only_evaluate(first_run, docker_env):
    record, _ = first_run
    facepipe(docker_env, "rerun", "evaluate", "--from", record["id"], "--set", "batch_size=8",
             "--experiment", "docker-e2e")
    rerun = latest_record(docker_env)
    assert rerun["runner"] == "docker" and rerun["from_run"] == record["id"]
    assert rerun["steps"]["evaluate"] == "executed"
    assert {s for t, s in rerun["steps"].items() if t != "evaluate"} == {"reused"}, rerun["steps"]
    assert rerun["outputs"]["recognizer"] == record["outputs"]["recognizer"]
    assert rerun["arguments"]["evaluate__batch_size"] == 8
    assert set(children(docker_env, rerun["mlflow"]["parent_run_id"])) == {"evaluate"}


def test_a_step_in_its_container_sees_hostile_strings_exactly(pushed, sandbox, tmp_path, monkeypatch):
    """Quotes, backslashes, newlines, unicode and JSON list text through the spec's command, the
    Docker command line and the executor input, into the step (pack's file prefix, the data digest)."""
    import kfp.local

    from facepipe.orchestration.local import docker_runner
    from components import component
    from facepipe.orchestration.params import step_parameters

    prefix = '["lfw.bin", "naïve ü 😀"]\n"quoted"'
    digest = 'digest "run" \\ back\\\\slash\nline ü ["a", "b\\"c"]'
    for k in [k for k in os.environ if k.startswith(("FACEPIPE_", "MLFLOW_"))]:
        monkeypatch.delenv(k)
    spool = tmp_path / "spool"
    monkeypatch.setenv("DOCKER_HOST", sandbox.env["DOCKER_HOST"])
    monkeypatch.setenv("FACEPIPE_IMAGES_LOCK", str(pushed["lock"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/only-spooled.db")
    monkeypatch.setenv("FACEPIPE_TRACKING_SPOOL", str(spool))
    kfp.local.init(runner=docker_runner(tmp_path, {}), pipeline_root=str(tmp_path / "kfp"))
    synth = {p.name: p.default for p in step_parameters("synth")} | {
        "synth__identities": 3, "synth__images": 2, "synth__scenes": 0, "synth__eval_identities": 0,
        "synth__face_size": 32}
    pack = component("pack", hosts=("synth",))
    task = pack(**synth, pack__size=32, pack__workers=1, pack__prefix=prefix, data_digest=digest)
    records = Path(task.outputs["records"].path)
    assert (records / f"{prefix}.rec").is_file() and (records / f"{prefix}.idx").is_file(), list(records.iterdir())
    events = [json.loads(line) for f in sorted(spool.glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert json.loads(task.outputs["lineage"])["data_digest"] == digest  # the string came through intact
    assert [e["params"]["prefix"] for e in events if e["op"] == "params" and "prefix" in e["params"]] == [prefix]


def test_a_training_killed_in_its_container_resumes_from_its_s3_checkpoint(docker_env, pushed, sandbox, s3_server):
    """SIGKILL to the train_recognition container once a checkpoint is on S3 (FACEPIPE_CHECKPOINT_ROOT, as a
    cluster's pipeline root), then the same command again: it resumes there, not from step 0."""
    import signal

    from facepipe.training.mirror import CheckpointMirror
    from tests.containers.harness import docker

    env = {**docker_env, "FACEPIPE_CHECKPOINT_ROOT": "s3://fp-docker/kill-root"}
    cmd = [sys.executable, "-m", "facepipe.cli", "run", "--runner", "docker", "--job", str(TINY_JOB),
           "--set", "train_recognition.max_steps=60", "--set", "train_recognition.epochs=4",
           "--set", "train_recognition.checkpoint_every=2",
           "--experiment", "docker-kill"]
    train_image = pushed["body"]["images"]["facepipe-train"]["reference"]
    first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    uploaded, killed = None, False
    try:
        deadline = time.monotonic() + 900
        with s3_server.env():
            from facepipe import storage

            while time.monotonic() < deadline and first.poll() is None and uploaded is None:
                root = "s3://fp-docker/kill-root/checkpoints/train_recognition"
                runs = [e.uri for e in storage.ls(root)] if storage.exists(root) else []
                uploaded = CheckpointMirror(runs[0], 0, 1, Path("/nonexistent"), 2).newest() if runs else None
                time.sleep(1)
        ids = docker(sandbox, "ps", "-q", "--filter", f"ancestor={train_image}").stdout.split()
        for container in ids:  # the step's own process, as a preempted pod's
            killed |= docker(sandbox, "kill", "--signal", "KILL", container, check=False).returncode == 0
        first.wait(120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
    assert uploaded is not None and killed, "no checkpoint reached S3 before the training ended"
    assert latest_record(env)["status"] != "succeeded"

    done = facepipe(env, *cmd[3:])
    record = latest_record(env)
    assert record["status"] == "succeeded"
    metrics = json.loads((PROJECT_ROOT / record["outputs"]["recognizer"] / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= uploaded > 0, metrics  # nothing before it trained again
    assert metrics["steps"] == metrics["total_steps"]
    assert "fetched the checkpoint of step" in run_logs(env, record), done.stdout[-3000:]  # the step's output is in its log file
