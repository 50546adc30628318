"""`facepipe run [--job jobs/NAME.yaml] [--set step.key=value ...] [--runner docker]`: the whole pipeline on this machine (kfp.local)."""

from __future__ import annotations

HELP = "run the pipeline locally through kfp.local (cached steps are reused), tracked in MLflow"


def add_common(parser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="STEP.KEY=VALUE",
                        help="override one parameter (repeatable), e.g. train_recognition.epochs=2")
    parser.add_argument("--runs-dir", help="runs folder (default: $FACEPIPE_RUNS_DIR or ./runs)")
    parser.add_argument("--pipeline", help="compiled spec to run (default: the project's pipeline.yaml)")
    parser.add_argument("--experiment", default="facepipe", help="MLflow experiment (default: facepipe)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--runner", choices=["subprocess", "docker"],
                        help="subprocess (default for run; rerun: the earlier run's): tasks as local processes; "
                             "docker: each task in its image from the images lock, on the engine at DOCKER_HOST")


def add_arguments(parser) -> None:
    parser.add_argument("--job", help="parameter set: a YAML file or a shipped name, e.g. tiny (default: demo)")
    parser.add_argument("--data", help="given data URI (path, file://, s3://, obs://) instead of synthetic data")
    parser.add_argument("--output", help="also publish every step's outputs under this URI")
    parser.add_argument("--retry", action="store_true", help="honour the spec's retry policy locally too")
    add_common(parser)


def print_summary(record, root) -> None:
    from pathlib import Path

    print(f"\nrun {record.id}: {record.status} in {record.seconds:.1f} s")
    for task, state in record.steps.items():
        print(f"  {task:20s} {state}")
    if record.outputs:
        import json

        from facepipe.steps import PIPELINE_STEPS, STEPS

        order = [STEPS[s].output for s in PIPELINE_STEPS] + ["metrics", "report"]
        print("outputs:")
        for name in sorted(record.outputs, key=lambda n: order.index(n) if n in order else len(order)):
            print(f"  {name:12s} {record.outputs[name]}")
        evaluation = record.outputs.get("evaluation")
        if evaluation and Path(evaluation).is_dir():
            for png in sorted(Path(evaluation).rglob("*.png"))[:8]:
                print(f"  {'plot':12s} {png}")
        skipped = Path(evaluation or "", "metrics.json")
        if evaluation and skipped.is_file():
            for part, why in (json.loads(skipped.read_text()).get("evaluate.skipped") or {}).items():
                print(f"  skipped {part}: {why}")
        metrics = record.outputs.get("metrics")
        if metrics and Path(metrics).is_file():
            print("metrics:")
            for key, value in sorted(json.loads(Path(metrics).read_text()).items()):
                if key.split(".")[0] in ("verification", "identification", "detection"):
                    print(f"  {key:36s} {value:.4g}")
    if record.mlflow:
        print(f"MLflow: parent run {record.mlflow['parent_run_id']} in experiment "
              f"{record.mlflow['experiment']!r} at {record.mlflow['tracking_uri']} (make mlflow-ui)")
    print(f"record: {Path(root) / record.id / 'run.json'}")


def run(args) -> int:
    from facepipe.orchestration import local

    sets = list(args.sets)
    if args.data:
        sets.append(f"pipeline.data_uri={args.data}")
    if args.output:
        sets.append(f"pipeline.output_uri={args.output}")
    job = args.job or local.DEFAULT_JOB
    record = local.run_local(job, sets, pipeline=args.pipeline, root=args.runs_dir, experiment=args.experiment,
                             track=not args.no_track, retries=args.retry, runner=args.runner or "subprocess")
    print_summary(record, local.runs_dir(args.runs_dir))
    return 0
