"""Bench: what orchestration costs around the steps of a local run, and what a rerun of the last step costs.

1. Orchestration overhead of `facepipe run` on jobs/tiny.yaml (fresh cache, every step executed):
   wall time minus the step functions' own time (reported by the components through
   FACEPIPE_TIMINGS), per executed step; without and with MLflow tracking (sqlite store).
   Goal: <= 1 s per step.
2. `facepipe rerun evaluate --from RUN` vs the evaluate step alone (a fresh process calling
   `evaluate_pipeline` on the same inputs: same imports, no KFP, no MLflow). Goal: <= 1.2x.
3. bench/storage.py (the storage layer vs plain boto3), when present.

With `--runner docker` instead: the same job run by the subprocess runner and by the docker runner
(every step in its image, the way `make demo-containers` runs it) in one go: wall time of each, their
ratio, orchestration overhead per executed step of each, the bare cost of one container start
(`docker run --rm IMAGE true`) and a rerun of `evaluate` in its container. Without a configured Docker
engine, images/demo.py's sandbox engine and registry are started and the images built and pushed first
(that time is printed apart).

Usage: .venv/bin/python bench/pipeline.py [--job jobs/tiny.yaml] [--skip-storage] [--runner docker]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def facepipe(args, env) -> float:
    start = time.perf_counter()
    done = subprocess.run([PY, "-m", "facepipe.cli"] + args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"facepipe {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return wall


def timings(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def latest_run(runs: Path) -> dict:
    return max((json.loads(p.read_text()) for p in runs.glob("*/run.json")), key=lambda r: r["start"] + r["id"])


def overhead(job: str, track: bool, work: Path, runner: str = "subprocess",
             base_env: dict | None = None) -> tuple[dict, dict]:
    runs = work / f"runs-{runner}-{'tracked' if track else 'untracked'}"
    runs.mkdir(parents=True)
    # Under the runs folder: the docker runner mounts it into each container at the same path.
    timing_file = runs / "timings.jsonl"
    env = {**(base_env or os.environ), "FACEPIPE_TIMINGS": str(timing_file),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("MLFLOW_TRACKING_URI", None)
    wall = facepipe(["run", "--job", job, "--runs-dir", str(runs), "--runner", runner]
                    + ([] if track else ["--no-track"]), env)
    record = latest_run(runs)
    executed = [t for t, s in record["steps"].items() if s == "executed"]
    compute = sum(t["seconds"] for t in timings(timing_file))
    result = {"tracking": track, "wall_s": wall, "steps_compute_s": compute, "executed_tasks": len(executed),
              "overhead_s": wall - compute, "overhead_per_step_s": (wall - compute) / max(1, len(executed))}
    return result, {"runs": runs, "record": record, "env": env, "timings": timing_file}


def rerun_vs_alone(job: str, state: dict) -> dict:
    runs, record, env = state["runs"], state["record"], state["env"]
    timing_file = state["timings"]
    timing_file.unlink(missing_ok=True)
    rerun_wall = facepipe(["rerun", "evaluate", "--from", record["id"], "--set", "evaluate.batch_size=32",
                           "--no-track", "--runs-dir", str(runs), "--runner", record.get("runner", "subprocess")], env)
    rerun = latest_run(runs)
    assert [t for t, s in rerun["steps"].items() if s == "executed"] == ["evaluate"], rerun["steps"]
    out = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    o = record["outputs"]
    # The images artifact is sharded (one tar per folder): extracted first, as the component does.
    script = (
        "from facepipe.config import load_config\n"
        "from facepipe.data.shards import unsharded\n"
        "from facepipe.evaluation.pipeline_eval import EvaluateConfig, evaluate_pipeline\n"
        f"cfg = load_config(EvaluateConfig, {job!r}, ['batch_size=32'], section='evaluate')\n"
        f"with unsharded({o['images']!r}) as data:\n"
        f"    evaluate_pipeline(cfg, data_dir=data, detector_path={o['detector'] + '/model.pt'!r}, "
        f"recognizer_path={o['recognizer'] + '/model.pt'!r}, gallery_dir={o['gallery']!r}, out_dir={str(out)!r})\n")
    start = time.perf_counter()
    subprocess.run([PY, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)
    alone = time.perf_counter() - start
    return {"rerun_evaluate_s": rerun_wall, "evaluate_alone_s": alone, "ratio": rerun_wall / alone}


def container_start_s(env: dict, repeats: int = 3) -> float:
    """Median seconds of `docker run --rm IMAGE true` on the train image (already pulled by the run)."""
    from facepipe.orchestration.images import read_lock

    image = read_lock(env.get("FACEPIPE_IMAGES_LOCK"))["images"]["facepipe-train"]["reference"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "true", image],
                       env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def print_overhead(label: str, result: dict) -> None:
    verdict = "meets" if result["overhead_per_step_s"] <= 1.0 else "misses"
    print(f"  {label}: wall {result['wall_s']:.1f} s, step functions {result['steps_compute_s']:.1f} s, "
          f"{result['executed_tasks']} tasks executed -> overhead {result['overhead_s']:.1f} s = "
          f"{result['overhead_per_step_s']:.2f} s per step ({verdict} the 1 s goal)", flush=True)


def docker_bench(job: str, work: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from images.demo import docker_env

    start = time.perf_counter()
    with docker_env(log=lambda m: print("  " + m, flush=True)) as env:
        print(f"  engine ready, images pushed and locked: {time.perf_counter() - start:.1f} s", flush=True)
        local, _ = overhead(job, False, work, "subprocess")
        print_overhead("subprocess runner, tracking off", local)
        docker, state = overhead(job, False, work, "docker", env)
        print_overhead("docker runner, tracking off", docker)
        per_step = (docker["overhead_s"] - local["overhead_s"]) / max(1, docker["executed_tasks"])
        print(f"  docker vs subprocess: wall {docker['wall_s'] / local['wall_s']:.2f}x "
              f"({docker['wall_s']:.1f} s vs {local['wall_s']:.1f} s); +{per_step:.2f} s orchestration per step; "
              f"one bare container start (docker run --rm IMAGE true): {container_start_s(env):.2f} s", flush=True)
        rerun = rerun_vs_alone(job, {**state, "env": {**state["env"], **env}})
        print(f"  rerun evaluate in its container {rerun['rerun_evaluate_s']:.1f} s vs evaluate alone on the host "
              f"{rerun['evaluate_alone_s']:.1f} s: {rerun['ratio']:.2f}x (only evaluate executed)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "tiny.yaml"))
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"bench/pipeline.py: job {args.job}, runner {args.runner}, work dir {work}", flush=True)
    if args.runner == "docker":
        return docker_bench(args.job, work)
    states = {}
    for track in (False, True):
        result, states[track] = overhead(args.job, track, work)
        print_overhead(f"local run, tracking {'on (sqlite)' if track else 'off'}", result)
    rerun = rerun_vs_alone(args.job, states[False])
    verdict = "meets" if rerun["ratio"] <= 1.2 else "misses"
    print(f"  rerun evaluate {rerun['rerun_evaluate_s']:.1f} s vs evaluate alone {rerun['evaluate_alone_s']:.1f} s: "
          f"{rerun['ratio']:.2f}x ({verdict} the 1.2x goal)")
    storage = ROOT / "bench" / "storage.py"
    if storage.exists() and not args.skip_storage:
        print("bench/storage.py:", flush=True)
        subprocess.run([PY, str(storage)], cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
