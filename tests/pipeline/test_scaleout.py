"""Training on several nodes: the Kubeflow Trainer TrainJob and the ModelArts job a step becomes.

No cluster runs here: the TrainJob is checked against the TrainJob CRD's own schema (a pinned copy
from kubeflow/trainer), and each container command is run as two local processes given the
environment the platform gives its nodes (PET_* from the Trainer's torch plugin; MA_NUM_HOSTS,
VC_TASK_INDEX, VC_WORKER_HOSTS, MA_NUM_GPUS from ModelArts, and the parameters it appends).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

CRD = Path(__file__).resolve().parents[1] / "data" / "trainer.kubeflow.org_trainjobs.yaml"
TRAIN = {"backbone": "iresnet18", "width": "0.25", "input_size": "56", "embedding_size": "32", "batch_size": "8",
         "workers": "0", "lr": "0.05", "scale": "16.0", "max_steps": "4", "log_every": "1", "export_onnx": "false",
         "seed": "3"}


def _env(**extra) -> dict:
    bin_dir = str(Path(sys.executable).parent)  # `python` of the command: the image's, here the venv's
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{PROJECT_ROOT}", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(commands: list[list[str]], envs: list[dict]) -> None:
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in zip(commands, envs)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for node, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"node {node}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def packed(synth_small, tmp_path_factory) -> Path:
    from facepipe.data.pack import PackConfig, pack

    out = tmp_path_factory.mktemp("packed")
    pack(PackConfig(size=64, workers=1), synth_small / "faces", out, progress=False)
    return out


@pytest.fixture(scope="module")
def one_node_two_ranks(packed, tmp_path_factory) -> dict:
    """The reference: the same training as 2 ranks on one node (torchrun --standalone)."""
    out = tmp_path_factory.mktemp("one_node")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facepipe.cli", "train-recognition", str(packed), str(out)]
                          + [w for k, v in TRAIN.items() for w in ("--set", f"{k}={v}")],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _trainjob(**change):
    from facepipe.orchestration import trainjob
    from facepipe.steps import STEPS

    step = STEPS["train_recognition"]
    command = trainjob.node_command(step, {"data_dir": "s3://faces/packed"}, "s3://models/run-1/train_recognition",
                                    {"epochs": "3"})
    args = dict(name="facepipe-train-recognition-20261201", namespace="ml", image="registry/facepipe-train@sha256:ab",
                command=command, num_nodes=4, procs_per_node=8, resources=step.resources,
                env={"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_SECRET_ACCESS_KEY": "x"}, secret="facepipe-credentials")
    return trainjob.manifest(**{**args, **change})


def test_trainjob_validates_against_the_trainjob_crd():
    import jsonschema

    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    validator = jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"])
    job = _trainjob()
    validator.validate(job)
    assert job["apiVersion"] == f"{crd['spec']['group']}/v1alpha1" and job["kind"] == crd["spec"]["names"]["kind"]
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed"} and trainer["numNodes"] == 4
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "1"}
    assert trainer["command"][:5] == ["python", "-m", "torch.distributed.run", "-m", "facepipe.cli"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3:9000"} in trainer["env"]
    assert "x" not in [e.get("value") for e in trainer["env"]]  # the secret comes from the Secret
    # the schema has teeth: what the API server would refuse, it refuses
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_trainjob(num_nodes="four"))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**job, "spec": {"trainer": trainer}})  # no runtimeRef


def test_trainjob_inputs_must_be_object_storage():
    from facepipe.errors import ConfigError
    from facepipe.orchestration.trainjob import remote_uri

    assert remote_uri("data_dir", "/s3/faces/packed") == "s3://faces/packed"
    with pytest.raises(ConfigError, match="data_dir.*object storage"):
        remote_uri("data_dir", "/tmp/outputs/records")


@pytest.mark.slow
def test_trainjob_command_on_two_nodes_trains_as_two_ranks_on_one(packed, one_node_two_ranks, s3_server):
    """The node command, run twice with the PET_* variables the Trainer injects: the two nodes
    rendezvous, read the data from S3, and rank 0 publishes the model there, once."""
    from facepipe import storage
    from facepipe.orchestration import trainjob
    from facepipe.steps import STEPS

    s3_server.create_bucket("scaleout")
    with s3_server.env():
        storage.upload(packed, "s3://scaleout/packed")
    command = trainjob.node_command(STEPS["train_recognition"], {"data_dir": "s3://scaleout/packed"},
                                    "s3://scaleout/run/train_recognition", TRAIN)
    command[0] = sys.executable
    port = _free_port()
    envs = [_env(**s3_server.aws_env(), PET_NNODES="2", PET_NODE_RANK=str(rank), PET_NPROC_PER_NODE="1",
                 PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port)) for rank in (0, 1)]
    _two_nodes([command, command], envs)
    with s3_server.env():
        names = {e.name.rsplit("/", 1)[-1] for e in storage.ls("s3://scaleout/run/train_recognition", recursive=True)}
        assert "model.pt" in names and "rank1.pt" not in names  # rank 1's shards stayed on its node
        with storage.localize("s3://scaleout/run/train_recognition/metrics.json") as path:
            metrics = json.loads(Path(path).read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == one_node_two_ranks["steps"]
    assert metrics["train.loss"] == pytest.approx(one_node_two_ranks["train.loss"], rel=1e-5)


@pytest.mark.slow
def test_modelarts_command_on_two_nodes_trains_once(packed, one_node_two_ranks, tmp_path, monkeypatch):
    """The job's command and parameters from the real request, run as two ModelArts nodes: each its
    own /home/ma-user with the input mapped in, ModelArts' variables set and the parameters appended."""
    from facepipe.orchestration import modelarts

    lock = tmp_path / "images.lock.json"
    lock.write_text(json.dumps({"registry": "swr.example/facepipe", "images": {
        "facepipe-train": {"tag": "t", "digest": "sha256:" + "ab" * 32, "reference": "swr.example/t@sha256:ab"}}}))
    spec = modelarts.TrainingJobSpec(step="train_recognition", inputs={"data": "obs://faces/packed"},
                                     output="obs://models/rec", flavor="cpu", node_count=2, lock=str(lock),
                                     sets=[f"{k}={v}" for k, v in TRAIN.items()])
    algorithm = modelarts.without_nulls(modelarts.build_request(spec).body.to_dict())["algorithm"]
    appended = " ".join(shlex.quote(f"--{p['name']}={p['value']}") for p in algorithm["parameters"])
    port, commands, envs = _free_port(), [], []
    for node in (0, 1):
        home = tmp_path / f"node{node}"  # each container's own /home/ma-user
        (home / "modelarts" / "inputs").mkdir(parents=True)
        (home / "modelarts" / "outputs" / "output_0").mkdir(parents=True)
        (home / "modelarts" / "inputs" / "data_0").symlink_to(packed)
        commands.append(["/bin/sh", "-c", algorithm["command"].replace(modelarts.HOME, str(home)) + " " + appended])
        envs.append(_env(MA_NUM_HOSTS="2", VC_TASK_INDEX=str(node), MA_NUM_GPUS="0", MASTER_PORT=str(port),
                         VC_WORKER_HOSTS="127.0.0.1,127.0.0.1"))
    _two_nodes(commands, envs)
    outputs = [tmp_path / f"node{n}" / "modelarts" / "outputs" / "output_0" for n in (0, 1)]
    assert (outputs[0] / "model.pt").exists() and not (outputs[1] / "model.pt").exists()
    assert not list(outputs[1].glob("*.json"))
    metrics = json.loads((outputs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["train.loss"] == pytest.approx(one_node_two_ranks["train.loss"], rel=1e-5)


def test_a_pipeline_step_on_several_nodes_needs_object_storage(tmp_path):
    """`run_step` sends a `nodes` > 1 step to a TrainJob; what the nodes could not reach is refused first."""
    from facepipe.errors import ConfigError
    from facepipe.orchestration.component_runtime import run_step

    with pytest.raises(ConfigError, match="output URI"):
        run_step("train_recognition", {"nodes": 2}, {"data_dir": str(tmp_path)}, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="data_dir.*object storage"):
        run_step("train_recognition", {"nodes": 2}, {"data_dir": str(tmp_path)}, str(tmp_path / "out"),
                 output_uri="s3://models/run-1")
