"""A training step on many nodes as a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1).

`component_runtime.run_step` sends a step here when its config has `nodes` > 1: the TrainJob runs
the step's own command in the train image on `nodes` pods of the `torch-distributed` runtime, whose
torch plugin injects PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR and
PET_MASTER_PORT; torchrun reads each PET_<FLAG> as its --<flag>, so the command names none. The
nodes read their inputs from object storage and rank 0 publishes the model to the output URI,
which this process then fetches. Kubernetes is reached through the `kubernetes` client (in-cluster
service account, else the kubeconfig); the manifest itself is built by a pure function.
"""

from __future__ import annotations

import re
import time

from facepipe.errors import ConfigError, FacepipeError
from facepipe.secrets import is_secret_key
from facepipe.steps import Step

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"
# what the nodes need to reach storage and tracking; secret ones come from a Kubernetes Secret
PASSED_ENV = ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "OBS_ENDPOINT", "OBS_REGION", "OBS_PATH_STYLE", "OBS_SIGNATURE",
              "OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
SECRET_ENV = "FACEPIPE_CREDENTIALS_SECRET"  # the Secret's name (its keys: the variable names)
KFP_MOUNTS = {"/s3/": "s3://", "/minio/": "s3://"}  # how KFP's launcher shows an artifact URI as a path


def node_command(step: Step, inputs: dict[str, str], out_uri: str, sets: dict[str, str]) -> list[str]:
    """The container command of every node: torchrun (rendezvous from PET_*) of the step's command."""
    args = [inputs[p.arg] for p in step.inputs]
    return ["python", "-m", "torch.distributed.run", "-m", "facepipe.cli", step.command, *args, out_uri,
            *[w for k, v in sets.items() for w in ("--set", f"{k}={v}")]]


def manifest(name: str, namespace: str, image: str, command: list[str], num_nodes: int, procs_per_node: int,
             resources, env: dict[str, str], secret: str = "") -> dict:
    """The TrainJob; `resources` is the step's `Resources` (per node); variables that hold secrets
    are taken from the Secret `secret` (keyed by their names), never written into the manifest."""
    per_node = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus:
        per_node["nvidia.com/gpu"] = str(resources.gpus)
    env_list = [{"name": k, "value": v} for k, v in env.items() if not is_secret_key(k)]
    env_list += [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": True}}}
                 for k in env if is_secret_key(k) and secret]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "facepipe"}},
            "spec": {"runtimeRef": {"name": RUNTIME},
                     "trainer": {"image": image, "command": command, "numNodes": num_nodes,
                                 "numProcPerNode": procs_per_node, "env": env_list,
                                 "resourcesPerNode": {"requests": per_node, "limits": per_node}}}}


def remote_uri(arg: str, value: str) -> str:
    """The object-storage URI the nodes can read an input from (a KFP artifact path maps back)."""
    for mount, scheme in KFP_MOUNTS.items():
        if value.startswith(mount):
            return scheme + value[len(mount):]
    if re.match(r"^(s3|obs)://", value):
        return value
    raise ConfigError(f"input {arg} {value!r}: a step on several nodes reads its inputs from object "
                      f"storage (s3://, obs://); a local path exists only on this pod")


def job_name(step: str) -> str:
    return f"facepipe-{step.replace('_', '-')}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"[:63]


def run(step: Step, cfg, inputs: dict, out_uri: str, poll_s: float = 10.0) -> str:
    """Create the TrainJob for this step and wait for it (status lines); returns its final condition."""
    import os

    from kubernetes import client, config

    from facepipe.config import to_dict
    from facepipe.orchestration.images import image_reference
    from facepipe.training.launch import ranks_per_node

    inputs = {arg: remote_uri(arg, str(v)) for arg, v in inputs.items() if v}  # refused before the cluster is asked
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    namespace = os.environ.get("FACEPIPE_NAMESPACE") or (open(ns_file).read().strip() if os.path.exists(ns_file)
                                                         else "default")
    defaults = to_dict(type(cfg)())
    # every key that differs, nodes and nproc_per_node aside: torchrun on each node is given those
    sets = {k: str(v) for k, v in to_dict(cfg).items() if v != defaults[k] and k not in ("nodes", "nproc_per_node")}
    name = job_name(step.name)
    body = manifest(name, namespace, os.environ.get("FACEPIPE_IMAGE") or image_reference(step.image),
                    node_command(step, inputs, out_uri, sets), cfg.nodes, ranks_per_node(cfg), step.resources,
                    {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)},
                    os.environ.get(SECRET_ENV, "facepipe-credentials"))
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    print(f"[facepipe] {step.name}: TrainJob {namespace}/{name} created ({cfg.nodes} nodes)", flush=True)
    seen = None
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = [c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"]
        state = conditions[-1]["type"] if conditions else "Created"
        if state != seen:
            message = conditions[-1].get("message", "") if conditions else ""
            print(f"[facepipe] TrainJob {name}: {state} {message}".rstrip(), flush=True)
            seen = state
        if state == "Failed":
            raise FacepipeError(f"TrainJob {namespace}/{name} failed: {message}; "
                                f"`kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name}`")
        if state == "Complete":
            return state
        time.sleep(poll_s)
