"""`facepipe submit` through the real kfp.Client, and `facepipe submit-modelarts` request building.

No KFP backend can run here (it needs Kubernetes), so kfp.Client talks to a small HTTP server
that answers the v2beta1 endpoints it calls (healthz, experiments, runs) and records the requests:
the test checks what a real backend would receive. ModelArts has no endpoint here either: the
test checks the CreateTrainingJobRequest the command builds.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from facepipe.errors import ConfigError
from facepipe.orchestration.local import PipelineSpec, _dag_tasks
from facepipe.steps import PIPELINE_STEPS
from tests.conftest import PROJECT_ROOT

TINY_JOB = PROJECT_ROOT / "jobs" / "tiny.yaml"


class KfpApi(BaseHTTPRequestHandler):
    requests: list = []
    auth: list = []  # (Authorization, Cookie) headers of each request

    def _record_auth(self) -> None:
        self.auth.append((self.headers.get("Authorization"), self.headers.get("Cookie")))

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._record_auth()
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        self._reply({})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self._record_auth()
        self.requests.append(("POST", self.path, body))
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        if self.path.startswith("/apis/v2beta1/runs"):
            return self._reply({"run_id": "run-42", "display_name": body.get("display_name"),
                                "experiment_id": body.get("experiment_id"), "state": "PENDING"})
        self._reply({})

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api():
    KfpApi.requests = []
    KfpApi.auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", KfpApi.requests
    server.shutdown()
    server.server_close()


def test_submit_sends_the_spec_with_changed_parameters_and_s3_root(kfp_api, monkeypatch):
    from facepipe.orchestration import submit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "kfp-submit-secret-value-123")
    host, requests = kfp_api
    sub = submit.prepare(host, TINY_JOB, ["evaluate.batch_size=8"], experiment="tiny", run_name="tiny-1",
                         pipeline_root="s3://facepipe-artifacts/kfp")
    out = submit.submit(sub)
    assert out["run_id"] == "run-42"
    (run,) = [body for method, path, body in requests if method == "POST" and path.startswith("/apis/v2beta1/runs")]
    assert run["display_name"] == "tiny-1" and run["experiment_id"] == "exp-1"
    params = run["runtime_config"]["parameters"]
    assert params["evaluate__batch_size"] == 8
    assert params["train_recognition__backbone"] == "mobilefacenet"
    assert "train_recognition__momentum" not in params  # unchanged defaults are not sent
    assert run["runtime_config"]["pipeline_root"] == "s3://facepipe-artifacts/kfp"
    spec = run["pipeline_spec"]["pipeline_spec"]  # with the kubernetes platform spec beside it
    assert spec["pipelineInfo"]["name"] == "facepipe"
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {s["secretName"] for s in platform["exec-train-recognition"]["secretAsEnv"]} >= {"facepipe-s3"}
    steps = {name: t for name, t in _dag_tasks(spec, spec["root"]["dag"]).items()
             if name.replace("-", "_") in PIPELINE_STEPS}
    assert len(steps) == 5 and all(t["cachingOptions"].get("enableCache") for t in steps.values())
    assert params["mlflow_experiment"] == "tiny"  # the parent run's experiment, made by the begin-run task
    assert "kfp-submit-secret-value-123" not in json.dumps(requests)


def test_rerun_on_kfp_turns_off_the_cache_of_that_step_only(kfp_api, monkeypatch):
    from facepipe.orchestration import submit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    host, requests = kfp_api
    sub = submit.prepare(host, TINY_JOB, ["evaluate.batch_size=4"], rerun_step="evaluate")
    tasks = PipelineSpec(sub.pipeline_file).tasks
    caching = {name: t["cachingOptions"].get("enableCache", False) for name, t in tasks.items()}
    assert caching.pop("evaluate") is False
    assert all(caching.values())
    assert all("retryPolicy" in t for t in tasks.values())  # cluster retries kept


def test_submit_refuses_bad_input_before_sending(kfp_api):
    from facepipe.errors import FacepipeError
    from facepipe.orchestration import submit

    host, requests = kfp_api
    with pytest.raises(ConfigError, match="object storage"):
        submit.prepare(host, TINY_JOB, pipeline_root="/tmp/local-root")
    with pytest.raises(ConfigError, match="valid keys"):
        submit.prepare(host, TINY_JOB, ["train_recognition.epoch=2"])
    with pytest.raises(FacepipeError, match="could not be reached"):
        submit.submit(submit.prepare("http://127.0.0.1:9", TINY_JOB))
    assert not requests


def test_submit_behind_a_login_sends_the_token_and_cookies_and_never_prints_them(kfp_api, monkeypatch, capsys):
    from facepipe.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    host, requests = kfp_api
    token, cookie = "eyJ-test-token-6d1f", "authservice_session=MTc-session-77"
    argv = ["submit", "--host", host, "--job", str(TINY_JOB), "--run-name", "behind-login"]
    assert main(argv + ["--existing-token", token, "--cookies", cookie]) == 0
    assert any(path.startswith("/apis/v2beta1/runs") for _, path, _ in requests)
    assert KfpApi.auth and set(KfpApi.auth) == {(f"Bearer {token}", cookie)}  # on every request
    # The same from the environment (kept out of the shell history and the process list).
    KfpApi.auth.clear()
    monkeypatch.setenv("FACEPIPE_KFP_TOKEN", token)
    monkeypatch.setenv("FACEPIPE_KFP_COOKIES", cookie)
    assert main(argv) == 0
    assert set(KfpApi.auth) == {(f"Bearer {token}", cookie)}
    assert main(argv + ["--dry-run"]) == 0
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err and "session-77" not in printed.out + printed.err
    # Nor in the error of a refused or unreachable host.
    from facepipe.errors import FacepipeError
    from facepipe.orchestration import submit

    auth = submit.KfpAuth.from_env()
    assert auth.existing_token == token and token not in repr(auth)
    with pytest.raises(FacepipeError) as refused:
        submit.submit(submit.prepare("http://127.0.0.1:9", TINY_JOB), auth=auth)
    assert token not in str(refused.value)
    assert auth.hide(f"401 for {token} and {cookie}") == "401 for *** and ***"


@pytest.fixture
def pinned_lock(tmp_path):
    lock = tmp_path / "images.lock.json"
    ref = "swr.cn-north-4.myhuaweicloud.com/facepipe/{}@sha256:" + "ab" * 32
    lock.write_text(json.dumps({"registry": "swr.cn-north-4.myhuaweicloud.com/facepipe", "images": {
        name: {"tag": "t", "digest": "sha256:" + "ab" * 32, "reference": ref.format(name)}
        for name in ("facepipe-data", "facepipe-train")}}))
    return lock


def test_modelarts_request_runs_the_step_in_the_swr_image_on_obs_paths(pinned_lock, monkeypatch):
    from facepipe.orchestration import modelarts

    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "modelarts-secret-sk-456")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    spec = modelarts.TrainingJobSpec(step="train_recognition", inputs={"data": "obs://face-data/packed/"},
                                     output="obs://face-models/rec-1", flavor="modelarts.vm.gpu.t4",
                                     sets=["epochs=3", "train_recognition.lr=0.01"], job=str(TINY_JOB),
                                     lock=str(pinned_lock), name="rec-job")
    body = modelarts.without_nulls(modelarts.build_request(spec).body.to_dict())
    assert body["kind"] == "job" and body["metadata"]["name"] == "rec-job"
    algorithm = body["algorithm"]
    assert algorithm["engine"]["image_url"] == (
        "swr.cn-north-4.myhuaweicloud.com/facepipe/facepipe-train@sha256:" + "ab" * 32)
    assert algorithm["inputs"][0]["remote"]["obs"]["obs_url"] == "/face-data/packed/"
    assert algorithm["outputs"][0]["remote"]["obs"]["obs_url"] == "/face-models/rec-1/"
    assert [(p["name"], p["access_method"]) for p in algorithm["inputs"] + algorithm["outputs"]] == [
        ("data", "env"), ("output", "env")]  # as env: ModelArts appends no --data_url= arguments
    command = algorithm["command"]
    assert command.startswith("cd /home/ma-user && ") and algorithm["working_dir"] == "/home/ma-user"
    assert '--nnodes="${MA_NUM_HOSTS:-1}" --node_rank="${VC_TASK_INDEX:-0}"' in command
    assert command.endswith("-m facepipe.cli train-recognition /home/ma-user/modelarts/inputs/data_0 "
                            "/home/ma-user/modelarts/outputs/output_0")
    parameters = {p["name"]: p for p in algorithm["parameters"]}
    assert parameters["epochs"]["value"] == "3" and parameters["lr"]["value"] == "0.01"
    assert parameters["backbone"]["value"] == "mobilefacenet" and parameters["lr_steps"]["value"] == "[0.76,0.88]"
    assert parameters["lr"]["constraint"] == {"type": "Float", "editable": True, "required": False}
    assert "m1" not in parameters  # unset: the loss's own default applies
    assert algorithm["environments"] == {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    assert body["spec"]["resource"] == {"flavor_id": "modelarts.vm.gpu.t4", "node_count": 1}
    assert "modelarts-secret-sk-456" not in json.dumps(body)


def test_modelarts_refuses_bad_requests(pinned_lock, monkeypatch):
    from facepipe.errors import StorageError
    from facepipe.orchestration import modelarts

    base = dict(step="build_gallery", output="obs://b/out", flavor="f", lock=str(pinned_lock))
    with pytest.raises(ConfigError, match="--detector --recognizer"):
        modelarts.build_request(modelarts.TrainingJobSpec(inputs={"data": "obs://b/faces"}, **base))
    with pytest.raises(ConfigError, match="obs://BUCKET/PATH"):
        modelarts.build_request(modelarts.TrainingJobSpec(
            inputs={"data": "s3://b/faces", "detector": "obs://b/d", "recognizer": "obs://b/r"}, **base))
    with pytest.raises(ConfigError, match="valid keys"):
        modelarts.build_request(modelarts.TrainingJobSpec(
            inputs={"data": "obs://b/faces", "detector": "obs://b/d", "recognizer": "obs://b/r"},
            sets=["no_such_key=1"], **base))
    for key in modelarts.CREDENTIAL_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", "ak")
    with pytest.raises(StorageError, match="HUAWEICLOUD_SDK_SK, HUAWEICLOUD_SDK_PROJECT_ID"):
        modelarts.client()


def test_modelarts_wait_prints_each_state_and_the_new_log_lines():
    """`--wait` on the two API calls it makes, answered as ModelArts answers them (SDK response models)."""
    from huaweicloudsdkmodelarts.v1 import model as ma

    from facepipe.orchestration import modelarts

    class Answers:  # the job's life as ModelArts reports it, one poll at a time
        phases = iter(["Pending", "Running", "Running", "Completed"])
        logs = iter(["step 1\n", "step 1\nstep 2\n", "step 1\nstep 2\ndone\n"])

        def show_training_job_details(self, request):
            assert request.training_job_id == "job-1"
            return ma.ShowTrainingJobDetailsResponse(status=ma.Status(phase=next(self.phases)))

        def show_training_job_logs_preview(self, request):
            assert request.task_id == "worker-0"
            return ma.ShowTrainingJobLogsPreviewResponse(content=next(self.logs))

    lines = []
    assert modelarts.follow("job-1", Answers(), poll_s=0, out=lines.append) == "Completed"
    assert lines == ["[modelarts] job job-1: Pending", "[modelarts] job job-1: Running", "step 1", "step 2",
                     "[modelarts] job job-1: Completed", "done"]
