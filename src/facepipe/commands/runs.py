"""`facepipe runs`: local runs with their status, start time, and which steps were executed or reused."""

from __future__ import annotations

HELP = "list local runs (id, status, start, steps executed vs reused)"


def add_arguments(parser) -> None:
    parser.add_argument("--runs-dir", help="runs folder (default: $FACEPIPE_RUNS_DIR or ./runs)")
    parser.add_argument("--json", action="store_true", help="print the run records as JSON")
    parser.add_argument("run_id", nargs="?", help="show one run in detail")


def run(args) -> int:
    import json

    from facepipe.orchestration import local

    if args.run_id:
        record = local.find_run(args.run_id, args.runs_dir)
        print(json.dumps(record.__dict__, indent=2, sort_keys=True))
        return 0
    records = local.list_runs(args.runs_dir)
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=2, sort_keys=True))
        return 0
    if not records:
        print(f"no runs in {local.runs_dir(args.runs_dir)}")
        return 0
    print(f"{'RUN':22s} {'STATUS':11s} {'START':21s} {'SECONDS':>8s}  STEPS")
    for r in records:
        groups = {}
        for task, state in r.steps.items():
            groups.setdefault(state, []).append(task)
        steps = "; ".join(f"{state}: {','.join(tasks)}" for state, tasks in groups.items())
        origin = f"  (rerun of {r.from_run} from {r.rerun_step})" if r.from_run else ""
        print(f"{r.id:22s} {r.status:11s} {r.start:21s} {r.seconds:8.1f}  {steps}{origin}")
    return 0
