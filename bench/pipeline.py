"""Bench: what orchestration costs around the steps of a local run, and what a rerun of the last step costs.

1. Orchestration overhead of `facepipe run` on jobs/tiny.yaml (fresh cache, every step executed):
   wall time minus the step functions' own time (reported by the components through
   FACEPIPE_TIMINGS), per executed step; without and with MLflow tracking (sqlite store).
   Goal: <= 1 s per step.
2. `facepipe rerun evaluate --from RUN` vs the evaluate step alone (a fresh process calling
   `evaluate_pipeline` on the same inputs: same imports, no KFP, no MLflow). Goal: <= 1.2x.
3. bench/storage.py (the storage layer vs plain boto3), when present.

Usage: .venv/bin/python bench/pipeline.py [--job jobs/tiny.yaml] [--skip-storage]
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


def overhead(job: str, track: bool, work: Path) -> tuple[dict, dict]:
    runs = work / ("runs-tracked" if track else "runs-untracked")
    timing_file = work / f"timings-{track}.jsonl"
    env = {**os.environ, "FACEPIPE_TIMINGS": str(timing_file), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("MLFLOW_TRACKING_URI", None)
    wall = facepipe(["run", "--job", job, "--runs-dir", str(runs)] + ([] if track else ["--no-track"]), env)
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
                           "--no-track", "--runs-dir", str(runs)], env)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "tiny.yaml"))
    parser.add_argument("--skip-storage", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"bench/pipeline.py: job {args.job}, work dir {work}")
    states = {}
    for track in (False, True):
        result, states[track] = overhead(args.job, track, work)
        verdict = "meets" if result["overhead_per_step_s"] <= 1.0 else "misses"
        print(f"  local run, tracking {'on (sqlite)' if track else 'off'}: wall {result['wall_s']:.1f} s, "
              f"step functions {result['steps_compute_s']:.1f} s, {result['executed_tasks']} tasks executed -> "
              f"overhead {result['overhead_s']:.1f} s = {result['overhead_per_step_s']:.2f} s per step "
              f"({verdict} the 1 s goal)")
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
