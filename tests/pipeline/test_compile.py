"""pipeline.yaml: deterministic compile, not stale, every config key a parameter, cluster settings, no secrets,
GPU steps refused on CPU torch images unless asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from facepipe.orchestration import images
from tests.conftest import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "pipeline.yaml"


# The committed lock is the CPU torch build: the committed spec is compiled as `make compile` does
# for TORCH_VARIANT=cpu.
ALLOW_CPU_TORCH = ["--allow-cpu-torch-on-gpu"]


def compile_to(out, lock=None, env=None, args=ALLOW_CPU_TORCH) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.compile", "--out", str(out)] + (["--lock", str(lock)] if lock else [])
    cmd += list(args)
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Two fresh compiles with the committed images lock (as `make compile` does)."""
    if not images.DEFAULT_LOCK.exists():
        pytest.fail(f"{images.DEFAULT_LOCK} is missing: `make push-images` writes it; pipeline.yaml must pin digests")
    out = tmp_path_factory.mktemp("compile")
    for name in ("a.yaml", "b.yaml"):
        done = compile_to(out / name, images.DEFAULT_LOCK, env={images.UNPINNED_ENV: "0"})
        assert done.returncode == 0, done.stderr
    return out / "a.yaml", out / "b.yaml"


def test_compile_is_deterministic(fresh):
    a, b = fresh
    assert a.read_bytes() == b.read_bytes()


def test_committed_pipeline_yaml_is_not_stale(fresh):
    a, _ = fresh
    assert COMMITTED.read_text() == a.read_text(), "pipeline.yaml is stale: run `make compile` and commit it"


def test_base_images_are_pinned_by_digest_from_the_lock(fresh):
    lock = images.read_lock(images.DEFAULT_LOCK)
    spec = list(yaml.safe_load_all(fresh[0].read_text()))[0]
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert used <= {entry["reference"] for entry in lock["images"].values()}
    assert all("@sha256:" in ref for ref in used)


def test_missing_lock_fails_with_how_to_fix(tmp_path):
    done = compile_to(tmp_path / "p.yaml", tmp_path / "no-such-lock.json", env={images.UNPINNED_ENV: "0"})
    assert done.returncode == 2
    assert "make push-images" in done.stderr and "no-such-lock.json" in done.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_unpinned_names_only_when_asked_and_visibly_flagged(tmp_path):
    done = compile_to(tmp_path / "p.yaml", tmp_path / "no-such-lock.json", env={images.UNPINNED_ENV: "1"})
    assert done.returncode == 0, done.stderr
    assert f"facepipe-train:{images.UNPINNED_TAG}" in (tmp_path / "p.yaml").read_text()


def test_every_step_config_key_is_a_pipeline_parameter():
    from facepipe.config import keys
    from facepipe.steps import PIPELINE_STEPS, STEPS

    spec = list(yaml.safe_load_all(COMMITTED.read_text()))[0]
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    for step in PIPELINE_STEPS:
        for key in keys(STEPS[step].config_class()):
            assert f"{step}__{key}" in params, f"{step}.{key} is not a pipeline parameter"
    assert {"data_uri", "output_uri", "mlflow_parent_run_id", "mlflow_experiment"} <= params


def test_cluster_settings_in_the_spec():
    from facepipe.orchestration.local import PipelineSpec

    spec, platform = list(yaml.safe_load_all(COMMITTED.read_text()))
    for name, task in PipelineSpec(COMMITTED).tasks.items():
        assert task["retryPolicy"]["maxRetryCount"] == 2, name
        assert task["retryPolicy"]["backoffDuration"] == "60s"
    executors = spec["deploymentSpec"]["executors"]
    training = executors["exec-train-recognition"]["container"]["resources"]
    assert training["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert training["accelerator"]["resourceCount"] == "1"
    assert executors["exec-pack"]["container"]["resources"]["resourceCpuRequest"] == "4"
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-pack"]["secretAsEnv"]
    names = {s["secretName"] for s in secrets}
    assert names == {"facepipe-s3", "facepipe-obs", "facepipe-mlflow"}


def test_credentials_never_reach_the_spec(tmp_path):
    secret = "S3CR3T-value-never-in-spec"
    env = {"AWS_SECRET_ACCESS_KEY": secret, "OBS_SECRET_ACCESS_KEY": secret, "MLFLOW_TRACKING_PASSWORD": secret,
           images.UNPINNED_ENV: "1"}
    done = compile_to(tmp_path / "p.yaml", images.DEFAULT_LOCK if images.DEFAULT_LOCK.exists() else None, env=env)
    assert done.returncode == 0, done.stderr
    assert secret not in (tmp_path / "p.yaml").read_text()
    assert secret not in COMMITTED.read_text()


def test_no_placeholder_inside_a_struct_or_list_constant():
    from pipeline.compile import placeholders_in_constants

    assert placeholders_in_constants(COMMITTED.read_text()) == []
    # What the spec looked like with one `config` struct per task: refused.
    placeholder = "{{$.inputs.parameters['pipelinechannel--evaluate__batch_size']}}"
    config = {"runtimeValue": {"constant": {"batch_size": placeholder}}}
    old = {"root": {"dag": {"tasks": {"evaluate": {"inputs": {"parameters": {"config": config}}}}}}}
    assert placeholders_in_constants(yaml.safe_dump(old)) == [
        "document0.root.dag.tasks.evaluate.inputs.parameters.config.runtimeValue.constant"]


def test_every_component_input_is_typed_and_described():
    from facepipe.orchestration.params import step_parameters
    from facepipe.steps import STEPS

    from facepipe.orchestration.local import PipelineSpec, _dag_tasks

    spec = list(yaml.safe_load_all(COMMITTED.read_text()))[0]
    for task_name, task in _dag_tasks(spec, spec["root"]["dag"]).items():
        component = spec["components"][task["componentRef"]["name"]]
        for name, body in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if "dag" in component:
                continue  # the exit handler's and conditions' own channels, not a component's inputs
            assert body["parameterType"] in ("STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN",
                                             "TASK_FINAL_STATUS"), name
            assert body.get("description"), f"{task_name}.{name} has no description"
    for task_name, task in PipelineSpec(COMMITTED).tasks.items():
        params = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
        step = task_name.replace("-", "_")
        keys = {p.name for p in step_parameters(step)} | ({p.name for p in step_parameters("synth")}
                                                          if step == "pack" else set())
        assert keys <= set(params), sorted(keys - set(params))
        # Every value arrives as its own pipeline parameter, never inside a constant.
        for name, value in task["inputs"]["parameters"].items():
            if name != "data_digest":  # pack's: the data-digest task's output
                assert value == {"componentInputParameter": f"pipelinechannel--{name}"}, (task_name, name, value)
    help_text = STEPS["train_recognition"].config_class().__dataclass_fields__["lr_steps"].metadata["help"]
    lr_steps = spec["components"]["comp-train-recognition"]["inputDefinitions"]["parameters"]["train_recognition__lr_steps"]
    assert help_text in lr_steps["description"] and "JSON" in lr_steps["description"]


def test_an_exit_handler_ends_the_run_and_no_step_is_keyed_by_the_publish_target():
    """One MLflow parent per run: `begin-run` first, `finish-run` as the exit handler's task (it gets the
    final status, and runs after a failure too); `output_uri` reaches only the publish tasks, and
    pack's cache key holds the given data's digest (the data-digest task's output)."""
    from facepipe.orchestration.local import PipelineSpec, _dag_tasks
    from pipeline.pipeline import TASKS

    spec = list(yaml.safe_load_all(COMMITTED.read_text()))[0]
    root = spec["root"]["dag"]["tasks"]
    finish = root["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finish["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert "cachingOptions" not in finish or not finish["cachingOptions"].get("enableCache")
    everything = _dag_tasks(spec, spec["root"]["dag"])
    steps = PipelineSpec(COMMITTED).tasks
    assert set(steps) == {t.replace("_", "-") for t in TASKS}
    for name, task in steps.items():
        params = task["inputs"].get("parameters", {})
        assert not {"output_uri", "mlflow_parent_run_id", "mlflow_experiment"} & set(params), name
        assert "begin-run" in task["dependentTasks"], name  # the parent exists before any step
        executor = spec["deploymentSpec"]["executors"][spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        assert "output_uri" not in json.dumps(executor), name
        assert task["cachingOptions"].get("enableCache") is True, name
    assert steps["pack"]["inputs"]["parameters"]["data_digest"]["taskOutputParameter"]["producerTask"] == "data-digest"
    publishers = {n: t for n, t in everything.items() if n.startswith("publish")}
    assert publishers and all("output_uri" in t["inputs"]["parameters"] for t in publishers.values())
    assert {"begin-run", "data-digest", "record-run"} <= set(everything)


def lock_with_train_variant(tmp_path, variant):
    """A copy of the committed lock whose facepipe-train says `variant` (None: says nothing)."""
    body = json.loads(images.DEFAULT_LOCK.read_text())
    entry = body["images"]["facepipe-train"]
    entry.pop("torch_variant", None)
    if variant:
        entry["torch_variant"] = variant
    path = tmp_path / f"lock-{variant}.json"
    path.write_text(json.dumps(body))
    return path


def platform_executors(spec_text: str) -> dict:
    return list(yaml.safe_load_all(spec_text))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("variant", ["cpu", None])
def test_gpu_steps_on_a_cpu_torch_image_are_refused_unless_asked(tmp_path, variant):
    lock = lock_with_train_variant(tmp_path, variant)
    done = compile_to(tmp_path / "p.yaml", lock, env={images.UNPINNED_ENV: "0"}, args=[])
    assert done.returncode == 2
    for name in ("train_detection", "train_recognition", "build_gallery"):
        assert name in done.stderr
    assert "--allow-cpu-torch-on-gpu" in done.stderr and "TORCH_VARIANT=cuda" in done.stderr
    assert ("cpu" if variant else "not recorded") in done.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_gpu_steps_on_a_cuda_image_compile_strictly(tmp_path):
    done = compile_to(tmp_path / "p.yaml", lock_with_train_variant(tmp_path, "cuda"), env={images.UNPINNED_ENV: "0"},
                      args=[])
    assert done.returncode == 0, done.stderr
    spec = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))[0]
    envs = [e["container"].get("env", []) for e in spec["deploymentSpec"]["executors"].values()]
    assert not any(v["name"] == "FACEPIPE_ALLOW_CPU_TORCH" for env in envs for v in env)


def test_pod_settings_in_the_spec():
    """Pull secret on every task; /dev/shm in memory for the trainers' DataLoader workers; each task's
    disk (an emptyDir over the launcher's /s3 artifact folder) sized from its Step record."""
    from facepipe.steps import STEPS

    from facepipe.orchestration.local import PipelineSpec, _dag_tasks

    text = COMMITTED.read_text()
    spec = list(yaml.safe_load_all(text))[0]
    executors = platform_executors(text)
    labels = {name: spec["components"][task["componentRef"]["name"]].get("executorLabel")
              for name, task in _dag_tasks(spec, spec["root"]["dag"]).items()}
    assert {"begin-run", "data-digest", "record-run", "finish-run"} <= set(labels)
    for task_name, label in labels.items():  # the run-level tasks too: they pull the same image
        if label:  # not a DAG of its own (the exit handler's, a dsl.If's)
            assert [s["secretName"] for s in executors[label]["imagePullSecret"]] == ["swr-pull"], task_name
    for task_name, task in PipelineSpec(COMMITTED).tasks.items():
        step = STEPS[task_name.replace("-", "_")]
        executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        shm = [m for m in executor.get("emptyDirMounts", []) if m["mountPath"] == "/dev/shm"]
        if step.resources.shm:
            assert shm == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": step.resources.shm,
                            "volumeName": "dshm"}], task_name
        else:
            assert not shm, task_name
        disk = [m for m in executor.get("emptyDirMounts", []) if m["mountPath"] == "/s3"]
        assert disk == [{"mountPath": "/s3", "sizeLimit": step.resources.disk, "volumeName": "artifact-disk"}], task_name
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][
            spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"].get("env", [])}
        assert env.get("FACEPIPE_ALLOW_CPU_TORCH") == ("1" if step.resources.gpus else None), task_name
    assert STEPS["train_recognition"].resources.shm and STEPS["evaluate"].resources.disk


def test_pull_secret_name_from_the_flag_or_the_environment(tmp_path):
    done = compile_to(tmp_path / "a.yaml", images.DEFAULT_LOCK, args=ALLOW_CPU_TORCH + ["--image-pull-secret", "my-swr"],
                      env={"FACEPIPE_IMAGE_PULL_SECRET": "from-env"})
    assert done.returncode == 0, done.stderr
    names = {s["secretName"] for e in platform_executors((tmp_path / "a.yaml").read_text()).values()
             for s in e["imagePullSecret"]}
    assert names == {"my-swr"}
    done = compile_to(tmp_path / "b.yaml", images.DEFAULT_LOCK, env={"FACEPIPE_IMAGE_PULL_SECRET": "from-env"})
    assert done.returncode == 0, done.stderr
    assert {s["secretName"] for e in platform_executors((tmp_path / "b.yaml").read_text()).values()
            for s in e["imagePullSecret"]} == {"from-env"}
    done = compile_to(tmp_path / "c.yaml", images.DEFAULT_LOCK, args=ALLOW_CPU_TORCH + ["--image-pull-secret", ""])
    assert done.returncode == 0, done.stderr
    assert "imagePullSecret" not in (tmp_path / "c.yaml").read_text()


def test_gpu_tasks_get_the_node_selector_and_tolerations_asked_for(tmp_path):
    from facepipe.steps import STEPS

    done = compile_to(tmp_path / "p.yaml", images.DEFAULT_LOCK, args=ALLOW_CPU_TORCH + [
        "--gpu-node-selector", "accelerator=nvidia-t4", "--gpu-toleration", "nvidia.com/gpu",
        "--gpu-toleration", "dedicated:NoExecute"])
    assert done.returncode == 0, done.stderr
    for executor, body in platform_executors((tmp_path / "p.yaml").read_text()).items():
        step = STEPS.get(executor.removeprefix("exec-").replace("-", "_"))
        if step and step.resources.gpus:
            assert body["nodeSelector"] == {"labels": {"accelerator": "nvidia-t4"}}, executor
            assert body["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"},
                                           {"effect": "NoExecute", "key": "dedicated", "operator": "Exists"}]
        else:
            assert "nodeSelector" not in body and "tolerations" not in body, executor
    bad = compile_to(tmp_path / "q.yaml", images.DEFAULT_LOCK, args=ALLOW_CPU_TORCH + ["--gpu-toleration", "x:Never"])
    assert bad.returncode == 2 and "--gpu-toleration 'x:Never'" in bad.stderr and "NoExecute" in bad.stderr
