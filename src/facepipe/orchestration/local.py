"""Local runs of the compiled pipeline.yaml through kfp.local: `facepipe run`, `facepipe runs`, `facepipe rerun`.

Layout under the runs folder (default `runs/`, or FACEPIPE_RUNS_DIR):

    runs/<RUN_ID>/run.json       what ran: arguments, status, steps executed or reused, outputs
    runs/<RUN_ID>/pipeline.yaml  the exact spec that ran (caching/retry adjusted for this run)
    runs/<RUN_ID>/summary.json   what the run's record-run task saw: output artifacts, steps executed or reused
    runs/<RUN_ID>/logs/<step>.log  everything a step's task printed (executor input, the step, a traceback)
    runs/<RUN_ID>/logs/pipeline.log  the rest: kfp.local's own lines, MLflow, warnings (run_console.py)
    runs/<RUN_ID>/kfp/...        the KFP pipeline root: artifacts of the steps executed here
    runs/.kfp_cache/             kfp.local's task cache, shared by all runs
    runs/checkpoints/<step>/<digest>/  checkpoints of unfinished trainings, for the next attempt to resume
                                 (FACEPIPE_CHECKPOINT_ROOT instead of runs/ when set: e.g. s3://...)
    runs/mlflow.db               the default MLflow tracking store

The run's MLflow parent is made and ended by the run's own tasks (`pipeline_run`: begin-run,
record-run, the exit handler's finish-run), as on a cluster; this runner gives them the run's id
(FACEPIPE_LOCAL_RUN_ID), replays the spooled step runs under the parent afterwards, and adds what
only it knows (the spec's digest, what a rerun reruns; KILLED after Ctrl-C, which no exit task sees).

A step whose component, image, command and arguments match an earlier successful one is not
executed: kfp.local's cache hands back the earlier run's artifacts. That is how a rerun reuses
upstream artifacts without recomputing them; `rerun` disables the cache only for the step it
reruns, and its downstream steps execute because their inputs changed.

Runners: `subprocess` (default): each task a process of this interpreter (the image only a name);
`docker`: each task's spec command in the image the images lock names (kfp.local's DockerRunner),
the runs folder and local data/output bind-mounted at the same paths, as this user on the host
network, credentials/MLflow settings as environment, GPUs when the host has them (docs/pipeline.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from facepipe.config import project_file
from facepipe.errors import ConfigError, FacepipeError
from facepipe.manifest import sha256_file
from facepipe.orchestration.params import RUN_PARAMETERS, RUN_SECTION, Arguments
from facepipe.orchestration.run_console import RunConsole, strip_colour
from facepipe.progress import EVERY_ENV as PROGRESS_EVERY_ENV

DEFAULT_PIPELINE = project_file("pipeline.yaml")
DEFAULT_JOB = project_file("jobs/demo.yaml")
RUNS_ENV = "FACEPIPE_RUNS_DIR"
EXPERIMENT = "facepipe"
RUN_RECORD = "run.json"
SUMMARY = "summary.json"  # what the run's record-run task wrote: outputs, steps executed or reused
LOGS = "logs"
RUNNERS = ("subprocess", "docker")
# What a container gets from this environment (on a cluster: the Kubernetes secrets in pipeline.py).
PASSED_ENV_PREFIXES = ("AWS_", "OBS_", "MLFLOW_", "FACEPIPE_", "OMP_NUM_THREADS")
# libyaml when present: the spec is large and the pure-Python parser takes a second on it.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def runs_dir(path: str | Path | None = None) -> Path:
    from facepipe.tracking import project_dir

    return Path(path or os.environ.get(RUNS_ENV) or project_dir() / "runs").resolve()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def file_digest(path: Path) -> str:
    return "sha256:" + sha256_file(path)


def _dag_tasks(spec: dict, dag: dict) -> dict[str, dict]:
    """Every task of a DAG and of the DAGs nested in it (exit handler, conditions), by name."""
    found = {}
    for name, task in dag.get("tasks", {}).items():
        found[name] = task
        nested = spec["components"].get(task["componentRef"]["name"], {}).get("dag")
        if nested:
            found.update(_dag_tasks(spec, nested))
    return found


class PipelineSpec:
    """The compiled pipeline.yaml: its step tasks (those with a `lineage` output; the run's light
    tasks around them are left out), their order and dependencies, its parameters."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            # The pipeline spec, then (with kfp.kubernetes settings) the platform spec.
            self.documents = list(yaml.load_all(self.path.read_text(), Loader=_YAML_LOADER))
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: pipeline spec not found; run `make compile`") from None
        self.spec = self.documents[0]
        components = self.spec["components"]
        self.tasks: dict[str, dict] = {
            name: task for name, task in _dag_tasks(self.spec, self.spec["root"]["dag"]).items()
            if "lineage" in components[task["componentRef"]["name"]].get("outputDefinitions", {}).get("parameters", {})}
        self.parameters = dict(self.spec["root"].get("inputDefinitions", {}).get("parameters", {}))

    @property
    def name(self) -> str:
        return self.spec["pipelineInfo"]["name"]

    def upstream(self, task: str) -> list[str]:
        return [t for t in self.tasks[task].get("dependentTasks", []) if t in self.tasks]

    def downstream(self, task: str) -> list[str]:
        """Tasks that consume `task`'s outputs, directly or not, in pipeline order."""
        found: set[str] = set()
        frontier = [task]
        while frontier:
            current = frontier.pop()
            for name in self.tasks:
                if current in self.upstream(name) and name not in found:
                    found.add(name)
                    frontier.append(name)
        return [t for t in self.order() if t in found]

    def order(self) -> list[str]:
        done: list[str] = []
        pending = list(self.tasks)
        while pending:
            for t in pending:
                if all(u in done for u in self.upstream(t)):
                    done.append(t)
                    pending.remove(t)
                    break
            else:
                raise ConfigError(f"{self.path}: the task graph has a cycle")
        return done

    def task_steps(self, task: str) -> list[str]:
        """Config sections a task reads (pack also reads synth's)."""
        params = self.tasks[task].get("inputs", {}).get("parameters", {})
        sections = set()
        for value in params.values():
            # Inside the exit handler the pipeline's parameters arrive as `pipelinechannel--<name>`.
            name = value.get("componentInputParameter", "").removeprefix("pipelinechannel--")
            if "__" in name:
                sections.add(name.split("__", 1)[0])
        return sorted(sections)

    def check_parameters(self, parameters: dict) -> None:
        """Refuse a spec whose parameters (names, types) no longer match the step configs."""
        kfp_types = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", str: "STRING"}
        missing = sorted(set(parameters) - set(self.parameters))
        extra = sorted(set(self.parameters) - set(parameters))
        retyped = sorted(name for name, p in parameters.items() if name in self.parameters
                         and self.parameters[name].get("parameterType") != kfp_types[p.kind])
        if missing or extra or retyped:
            raise ConfigError(
                f"{self.path} does not match the step configs (missing {missing[:8]}, unexpected {extra[:8]}, "
                f"type changed {retyped[:8]}): it is stale; run `make compile`")

    def variant(self, no_cache: Iterable[str] = (), retries: bool = False, images: dict | None = None) -> str:
        """The spec's YAML with caching off for some tasks, (locally) no retries, and each executor's
        image replaced by the reference `images` (an images lock's entries) has for its name."""
        spec = json.loads(json.dumps(self.spec))
        for name, task in _dag_tasks(spec, spec["root"]["dag"]).items():
            if name in set(no_cache):
                task["cachingOptions"] = {}
            if not retries:
                task.pop("retryPolicy", None)
        for executor in spec["deploymentSpec"]["executors"].values() if images is not None else ():
            container = executor["container"]
            name = re.split(r"[@:]", container["image"].rsplit("/", 1)[-1])[0]
            if name not in images:
                raise ConfigError(f"{self.path}: image {container['image']!r} has no entry {name!r} in the images "
                                  f"lock (it has {sorted(images)}); run `make push-images`")
            container["image"] = images[name]["reference"]
        return yaml.dump_all([spec] + self.documents[1:], Dumper=_YAML_DUMPER, sort_keys=False)


@dataclass
class RunRecord:
    id: str
    status: str = "running"
    start: str = ""
    end: str = ""
    seconds: float = 0.0
    job: str | None = None
    sets: list[str] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    from_run: str | None = None
    rerun_step: str | None = None
    runner: str = "subprocess"
    steps: dict[str, str] = field(default_factory=dict)      # task -> executed | reused | failed | not run
    outputs: dict[str, str] = field(default_factory=dict)    # pipeline output -> local path
    mlflow: dict[str, str] = field(default_factory=dict)
    pipeline_digest: str = ""
    error: str = ""
    pid: int = 0
    host: str = ""

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (RUN_RECORD + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True))
        os.replace(tmp, folder / RUN_RECORD)

    @classmethod
    def load(cls, folder: Path) -> "RunRecord":
        path = folder / RUN_RECORD
        try:
            body = json.loads(path.read_text())
            record = cls(**{k: v for k, v in body.items() if k in cls.__dataclass_fields__})
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such run") from None
        except (ValueError, TypeError, AttributeError) as exc:  # truncated, not JSON, or not a record
            raise ConfigError(f"{path}: corrupt run record ({type(exc).__name__}: {exc})") from None
        if record.status == "running" and record.host == socket.gethostname() and not _alive(record.pid):
            record.status = "interrupted"  # its process died without writing the end of the record
        return record


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs(root: str | Path | None = None) -> list[RunRecord]:
    base = runs_dir(root)
    out = []
    for path in sorted(base.glob(f"*/{RUN_RECORD}")):
        try:
            out.append(RunRecord.load(path.parent))
        except ConfigError as exc:
            print(f"warning: {exc}", file=sys.stderr)  # named, not hidden
    return out


def find_run(run_id: str, root: str | Path | None = None) -> RunRecord:
    base = runs_dir(root)
    if (base / run_id / RUN_RECORD).exists():
        return RunRecord.load(base / run_id)
    matches = [r for r in list_runs(base) if r.id.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"run {run_id!r} matches several runs: {[r.id for r in matches][-10:]}; give more of the id")
    known = [r.id for r in list_runs(base)][-10:]
    raise ConfigError(f"run {run_id!r} not found in {base}; recent runs: {known}")


def _task_states(spec: PipelineSpec, kfp_root: Path, finished: bool) -> dict[str, str]:
    """executed / reused / failed / not run, from what the tasks left in this run's pipeline root."""
    run_folders = sorted(kfp_root.glob(f"{spec.name}-*"))
    here = run_folders[-1] if run_folders else None
    states = {}
    for task in spec.order():
        folder = here / task if here else None
        if folder is not None and (folder / "executor_output.json").exists():
            states[task] = "executed"
        elif folder is not None and folder.exists():
            states[task] = "failed"
        elif here is None and not finished:
            states[task] = "not run"  # the run stopped before any task
        else:
            states[task] = "reused"
    # A task after a failure did not run, though it left no folder either.
    failed = [t for t, s in states.items() if s == "failed"]
    for t in failed:
        for d in spec.downstream(t):
            states[d] = "not run"
    return states


def tracking_store(base: Path) -> str:
    """MLFLOW_TRACKING_URI, else the runs folder's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}"


def _tracking_setup(base: Path) -> str:
    """`tracking_store`, exported for the step processes."""
    uri = os.environ["MLFLOW_TRACKING_URI"] = tracking_store(base)
    return uri


def run_local(job: str | Path | None = None, sets: Iterable[str] | None = None, *,
              pipeline: str | Path | None = None, root: str | Path | None = None,
              base_arguments: dict[str, Any] | None = None, rerun_step: str | None = None,
              from_run: str | None = None, experiment: str = EXPERIMENT, track: bool = True,
              retries: bool = False, verbose: bool = False, runner: str = "subprocess") -> RunRecord:
    """Run the compiled pipeline locally; returns its record (also in runs/<id>/run.json).

    The terminal gets one line per step (`run_console.RunConsole`), each step's whole output goes to
    runs/<id>/logs/<step>.log; `verbose` echoes everything as kfp.local prints it."""
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}; choose one of {list(RUNNERS)}")
    import kfp.local
    from kfp import components

    from facepipe.orchestration.attempts import CHECKPOINT_ROOT_ENV
    from facepipe.orchestration.component_runtime import RUN_PID_ENV, SPOOL_ENV
    from facepipe.orchestration.images import read_lock
    from facepipe.orchestration.pipeline_run import LOCAL_RUN_ENV, SUMMARY_ENV

    spec = PipelineSpec(pipeline or DEFAULT_PIPELINE)
    arguments_model = Arguments(_pipeline_steps(spec))
    spec.check_parameters(arguments_model.parameters)
    values = arguments_model.resolve(job, sets, base=base_arguments)
    images = read_lock()["images"] if runner == "docker" else None
    engine = docker_engine() if runner == "docker" else None  # fails before anything is started

    base = runs_dir(root)
    record = RunRecord(id=new_run_id(), job=str(job) if job else None, sets=list(sets or []),
                       arguments=values, from_run=from_run, rerun_step=rerun_step, runner=runner,
                       start=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       pipeline_digest=file_digest(spec.path), pid=os.getpid(), host=socket.gethostname())
    folder = base / record.id
    forced = [rerun_step] if rerun_step else []
    run_spec = folder / "pipeline.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    run_spec.write_text(spec.variant(no_cache=forced, retries=retries, images=images))
    record.save(folder)

    console = RunConsole(folder / LOGS, spec.order(), {t: spec.upstream(t) for t in spec.order()}, folder / "kfp",
                         verbose=verbose)
    origin = f", rerun of {from_run} from {rerun_step}" if from_run else ""
    console.say(f"run {record.id} ({runner}{origin}): {len(spec.order())} steps; their logs: {folder / LOGS}/")
    os.environ.setdefault(PROGRESS_EVERY_ENV, "5")  # the steps' progress lines, for the running line
    try:
        with console.capture():
            own_root = CHECKPOINT_ROOT_ENV not in os.environ  # a user's (e.g. s3://...) wins
            if own_root:
                os.environ[CHECKPOINT_ROOT_ENV] = str(base)  # what a cluster's pipeline root is for checkpoints
            os.environ[RUN_PID_ENV] = str(os.getpid())  # the steps end when this process dies (kill -9 too)
            # What a cluster's tasks get from their pod: the run's id, by which they find the MLflow parent
            # that the run's `begin-run` task makes (and `finish-run` ends); `record-run` writes the summary.
            os.environ[LOCAL_RUN_ENV] = record.id
            os.environ[SUMMARY_ENV] = str(folder / SUMMARY)
            saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None) if not track else None
            if track:
                from facepipe import tracking

                uri = _tracking_setup(base)
                commit = tracking.git_commit()
                if commit:  # step containers (the docker runner passes FACEPIPE_*) have no git checkout
                    os.environ[tracking.COMMIT_ENV] = commit
                values["mlflow_experiment"] = values.get("mlflow_experiment") or experiment
                if runner == "subprocess" or not uri.startswith(("http://", "https://")):
                    # Replayed by this process; containers log to a tracking server themselves, as on a cluster.
                    os.environ[SPOOL_ENV] = str(folder / "tracking-spool")
                _replay_leftovers(base)
                record.mlflow = {"tracking_uri": uri, "experiment": values["mlflow_experiment"], "parent_run_id": ""}
                record.save(folder)

            started = time.time()
            kfp_runner = (docker_runner(base, values, engine) if runner == "docker" else kfp.local.SubprocessRunner(use_venv=False))
            kfp.local.init(runner=kfp_runner, pipeline_root=str(folder / "kfp"), enable_caching=True,
                           cache_root=str(base / ".kfp_cache"))
            try:
                components.load_component_from_file(str(run_spec))(**values)
                record.status = "succeeded"
            except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
                record.status = "failed"
                record.error = strip_colour(str(exc))[:2000]  # kfp colours its messages
            except KeyboardInterrupt:
                record.status = "interrupted"
            finally:
                record.seconds = round(time.time() - started, 2)
                record.end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).exists() else {}
                record.outputs = summary.get("outputs", {})
                record.steps = _task_states(spec, folder / "kfp", record.status == "succeeded")
                record.save(folder)
                if track:
                    from facepipe.orchestration.component_runtime import replay_spool

                    if any((folder / "tracking-spool").glob("*.jsonl")):
                        console.say("  recording the steps' runs and models in MLflow ...")
                    replay_spool(folder / "tracking-spool")
                    _tag_parent(record)
                    record.save(folder)
                for name in (SPOOL_ENV, LOCAL_RUN_ENV, SUMMARY_ENV):
                    os.environ.pop(name, None)
                if own_root:
                    os.environ.pop(CHECKPOINT_ROOT_ENV, None)
                if saved_uri is not None:
                    os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    finally:
        console.finish(record.steps)
    if record.status == "interrupted":
        raise KeyboardInterrupt
    if record.status != "succeeded":
        raise FacepipeError(f"run {record.id} failed: {record.error.splitlines()[0] if record.error else ''}"
                            f" (steps: {record.steps}; logs in {folder / LOGS})")
    return record


def docker_engine() -> dict:
    """`docker info` of the configured engine (DOCKER_HOST, else the default socket)."""
    import docker

    try:
        return docker.from_env().info()
    except docker.errors.DockerException as exc:
        raise FacepipeError(f"--runner docker: no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r}:"
                            f" {exc}); start one, or run `make demo-containers`, which starts a sandbox engine "
                            f"and registry and stops them by PID") from None


def docker_runner(base: Path, values: dict[str, Any], info: dict | None = None):
    """kfp.local's DockerRunner on the configured engine, set up as the module docstring says."""
    import docker
    import kfp.local

    info = info or docker_engine()
    mounts = [docker.types.Mount(str(base), str(base), type="bind")]
    for name in ("data_uri", "output_uri"):
        value = values.get(name, "")
        if value and ("://" not in value or value.startswith("file://")):
            path = Path(value.removeprefix("file://")).resolve()
            path.mkdir(parents=True, exist_ok=True) if name == "output_uri" else None
            mounts.append(docker.types.Mount(str(path), str(path), type="bind", read_only=name == "data_uri"))
    gpus = {}
    if "nvidia" in info.get("Runtimes", {}) and shutil.which("nvidia-smi") and \
            subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        gpus = {"device_requests": [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}
    from facepipe.orchestration.component_runtime import RUN_PID_ENV

    # Not the runner's pid: a container has its own pid namespace, where that pid is not the runner.
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES) and k != RUN_PID_ENV}
    return kfp.local.DockerRunner(environment=env, mounts=mounts, user=f"{os.getuid()}:{os.getgid()}",
                                  network_mode="host", **gpus)


def _replay_leftovers(base: Path) -> None:
    """Tracking events of steps whose runner was killed before replaying them."""
    from facepipe.orchestration.component_runtime import replay_spool

    for spool in base.glob("*/tracking-spool"):
        if any(spool.glob("*.jsonl")) and RunRecord.load(spool.parent).status != "running":
            replay_spool(spool)


def _tag_parent(record: RunRecord) -> None:
    """What only the local runner knows, on the run's MLflow parent (made and ended by the run's own
    tasks, found by the local run id): the spec's digest, what it reruns, each task's state as seen
    in the pipeline root. A run stopped by Ctrl-C never reached its exit task: it is ended KILLED."""
    from facepipe.orchestration.pipeline_run import find_parent
    from facepipe.tracking import MlflowLogger, end_run, get_run

    parent = find_parent(("facepipe.local_run_id", record.id))
    if not parent:
        return
    record.mlflow["parent_run_id"] = parent
    tags = {"facepipe.pipeline_digest": record.pipeline_digest, "facepipe.status": record.status,
            **{f"facepipe.step.{task.replace('-', '_')}": state for task, state in record.steps.items()}}
    if record.from_run:
        tags.update({"facepipe.rerun_of": record.from_run, "facepipe.rerun_step": record.rerun_step or ""})
    MlflowLogger(parent).set_tags(tags)
    if record.status == "interrupted" and get_run(parent).info.status == "RUNNING":
        end_run(parent, "KILLED")


def _pipeline_steps(spec: PipelineSpec) -> list[str]:
    """The step config sections the spec's parameters cover, in pipeline order."""
    from facepipe.steps import STEPS

    present = {name.split("__", 1)[0] for name in spec.parameters if "__" in name}
    return [s for s in STEPS if s in present] + sorted(present - set(STEPS))


def rerun_plan(spec: PipelineSpec, step: str) -> tuple[str, list[str], list[str]]:
    """(task to rerun, its downstream tasks, the config sections they read) for `facepipe rerun STEP`."""
    task_for_section = {}
    for task in spec.order():
        for section in spec.task_steps(task):
            task_for_section.setdefault(section, task)
    if step not in task_for_section:
        raise ConfigError(f"unknown step {step!r}; steps you can rerun: {list(task_for_section)}")
    task = task_for_section[step]
    downstream = spec.downstream(task)
    sections = [s for t in [task] + downstream for s in spec.task_steps(t)]
    return task, downstream, sections


def rerun(step: str, from_run: str, sets: Iterable[str] | None = None, *, root=None, pipeline=None,
          track: bool = True, experiment: str = EXPERIMENT, runner: str | None = None,
          retries: bool = False, verbose: bool = False) -> RunRecord:
    """Rerun `step` and what depends on it with changed parameters, reusing the run's upstream artifacts."""
    earlier = find_run(from_run, root)
    spec = PipelineSpec(pipeline or DEFAULT_PIPELINE)
    task, downstream, sections = rerun_plan(spec, step)
    model = Arguments(_pipeline_steps(spec))
    sets = list(sets or [])
    qualified = []
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if "." not in key and "__" not in key and key not in RUN_PARAMETERS:
            key = f"{step}.{key}"
        name = model.name_for(key, f"--set {item}")
        section = model.parameters[name].step
        if section != RUN_SECTION and section not in sections:
            raise ConfigError(f"--set {item}: {section} runs upstream of {step} and would not be rerun; "
                              f"rerun {section} instead, or set keys of {sections}")
        if section == RUN_SECTION and name == "data_uri":
            raise ConfigError(f"--set {item}: changing the data reruns everything; use `facepipe run`")
        qualified.append(f"{key}={value}")
    known = {k: v for k, v in earlier.arguments.items() if k in model.parameters}
    record = run_local(None, qualified, pipeline=spec.path, root=root, base_arguments=known, rerun_step=task,
                       from_run=earlier.id, track=track, experiment=experiment, runner=runner or earlier.runner,
                       retries=retries, verbose=verbose)
    recomputed = [t for t, state in record.steps.items() if state == "executed" and t not in [task] + downstream]
    if recomputed:
        # Their cache entries or artifacts were gone (cleaned runs folder, other pipeline.yaml).
        print(f"note: upstream steps {recomputed} were recomputed: run {earlier.id}'s cached outputs "
              f"for them were not found", file=sys.stderr)
    return record
