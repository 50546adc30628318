"""`facepipe submit --host URL [--job] [--set] [--experiment NAME]`: the pipeline on a Kubeflow Pipelines cluster."""

from __future__ import annotations

HELP = "submit pipeline.yaml to a Kubeflow Pipelines backend (kfp.Client) with a job's parameters"


def add_arguments(parser) -> None:
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://HOST/pipeline")
    parser.add_argument("--job", help="parameter set: a YAML file or a shipped name, e.g. demo (default: the spec's defaults)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="STEP.KEY=VALUE",
                        help="override one parameter (repeatable)")
    parser.add_argument("--experiment", default="facepipe", help="KFP and MLflow experiment (default facepipe)")
    parser.add_argument("--run-name", help="run name (default facepipe-TIMESTAMP)")
    parser.add_argument("--pipeline-root", help="artifact root, e.g. s3://BUCKET/facepipe (default: the cluster's)")
    parser.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    parser.add_argument("--pipeline", help="compiled spec (default: the project's pipeline.yaml)")
    parser.add_argument("--no-cache", action="store_true", help="execute every step, reuse nothing")
    parser.add_argument("--rerun", metavar="STEP", help="execute STEP even if its inputs are unchanged "
                                                        "(downstream steps follow; upstream steps are reused)")
    parser.add_argument("--existing-token", metavar="TOKEN",
                        help="bearer token for a KFP behind a login, as the kfp CLI's (env FACEPIPE_KFP_TOKEN, "
                             "which keeps it out of the shell history and process list)")
    parser.add_argument("--cookies", metavar="COOKIES",
                        help="cookies for the KFP API, e.g. 'authservice_session=...' (env FACEPIPE_KFP_COOKIES)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print what would be sent")


def run(args) -> int:
    import json

    from facepipe.orchestration import submit

    sub = submit.prepare(args.host, args.job, args.sets, pipeline=args.pipeline, experiment=args.experiment,
                         run_name=args.run_name, pipeline_root=args.pipeline_root, cache=not args.no_cache,
                         rerun_step=args.rerun, namespace=args.namespace)
    if args.dry_run:
        print(json.dumps({k: v for k, v in sub.__dict__.items() if k != "changed"}, indent=2, sort_keys=True))
        return 0
    auth = submit.KfpAuth.from_env(args.existing_token, args.cookies)
    out = submit.submit(sub, auth=auth)
    print(f"KFP run {out['run_id']} ({out['run_name']}) in experiment {out['experiment']!r} at {args.host}; "
          f"its begin-run task makes the MLflow parent run, tagged facepipe.kfp_run_id={out['run_id']}")
    return 0
