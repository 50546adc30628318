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
    parser.add_argument("--verbose", action="store_true",
                        help="print every step's whole output live (kfp.local's, as it prints it); without it, "
                             "one line per step and the output in runs/<id>/logs/<step>.log")
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
    """After the step lines: how the run ended, where its outputs, logs and MLflow runs are."""
    import collections
    import json
    from pathlib import Path

    from facepipe.orchestration.local import LOGS, RUN_RECORD
    from facepipe.orchestration.run_console import headline
    from facepipe.steps import PIPELINE_STEPS, STEPS

    folder = Path(root) / record.id
    counts = ", ".join(f"{n} {state}" for state, n in collections.Counter(record.steps.values()).items())
    print(f"run {record.id}: {record.status} in {record.seconds:.1f} s ({counts})")
    if record.outputs:
        order = [STEPS[s].output for s in PIPELINE_STEPS] + ["metrics", "report"]
        print("outputs:")
        for name in sorted(record.outputs, key=lambda n: order.index(n) if n in order else len(order)):
            print(f"  {name:12s} {record.outputs[name]}")
        evaluation = Path(record.outputs.get("evaluation") or "/nonexistent")
        if evaluation.is_dir():
            print(f"  {'plots':12s} {len(list(evaluation.rglob('*.png')))} PNG files under evaluation/")
        if (evaluation / "metrics.json").is_file():
            for part, why in (json.loads((evaluation / "metrics.json").read_text()).get("evaluate.skipped") or {}).items():
                print(f"  skipped {part}: {why}")
        metrics = Path(record.outputs.get("metrics") or "/nonexistent")
        if metrics.is_file():
            print(f"metrics: {headline('evaluate', json.loads(metrics.read_text()))} (all of them: the metrics output)")
    print(f"logs: {folder / LOGS}/ (<step>.log: a step's whole output; pipeline.log: the rest)")
    if record.mlflow:
        from facepipe import tracking

        uri, parent = record.mlflow["tracking_uri"], record.mlflow["parent_run_id"]
        print(f"MLflow: parent run {parent} in experiment {record.mlflow['experiment']!r} at {uri}")
        try:
            url = tracking.run_url(tracking.ui_base(uri), tracking.run_data(parent, uri)["experiment_id"], parent)
            print(f"  UI: {url}" + ("" if uri.startswith(("http://", "https://")) else " (start it: make mlflow-ui)"))
        except Exception as exc:  # noqa: BLE001 - the run is recorded; only the link is missing
            print(f"  UI: unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    if record.from_run:
        print(f"what changed: facepipe compare {record.from_run} {record.id}")
    print(f"record: {folder / RUN_RECORD}")


def run(args) -> int:
    from facepipe.orchestration import local

    sets = list(args.sets)
    if args.data:
        sets.append(f"pipeline.data_uri={args.data}")
    if args.output:
        sets.append(f"pipeline.output_uri={args.output}")
    job = args.job or local.DEFAULT_JOB
    record = local.run_local(job, sets, pipeline=args.pipeline, root=args.runs_dir, experiment=args.experiment,
                             track=not args.no_track, retries=args.retry, runner=args.runner or "subprocess",
                             verbose=args.verbose)
    print_summary(record, local.runs_dir(args.runs_dir))
    return 0
