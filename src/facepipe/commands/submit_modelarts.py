"""`facepipe submit-modelarts STEP --data obs://... --output obs://... --flavor ID`: one step as a ModelArts training job."""

from __future__ import annotations

HELP = "submit one step as a Huawei Cloud ModelArts training job (SWR image, OBS input/output)"


def add_arguments(parser) -> None:
    from facepipe.orchestration.modelarts import JOB_STEPS, input_names

    parser.add_argument("step", choices=JOB_STEPS, help="the step to run")
    # One option per step input (port), named as the job's OBS input.
    for name in dict.fromkeys(n for step in JOB_STEPS for n in input_names(step)):
        steps = [s for s in JOB_STEPS if name in input_names(s)]
        parser.add_argument(f"--{name}", help=f"input folder, obs://BUCKET/PATH ({', '.join(steps)})")
    parser.add_argument("--output", required=True, help="output folder, obs://BUCKET/PATH")
    parser.add_argument("--flavor", help="ModelArts resource flavor ID (default: $MODELARTS_FLAVOR)")
    parser.add_argument("--nodes", type=int, default=1, help="node count (default 1); a training step trains on "
                                                             "all of them together (torchrun)")
    parser.add_argument("--gpus-per-node", type=int, default=0,
                        help="training ranks per node (default 0: every GPU of the flavor, 1 on CPU)")
    parser.add_argument("--name", help="job name (default facepipe-STEP-TIMESTAMP)")
    parser.add_argument("--job", help="parameter set (jobs/NAME.yaml); its STEP section is used")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key of STEP (repeatable)")
    parser.add_argument("--lock", help="images lock (default images/images.lock.json)")
    parser.add_argument("--wait", action="store_true", help="follow the job's state and logs until it ends")
    parser.add_argument("--dry-run", action="store_true", help="print the request body and send nothing")


def run(args) -> int:
    import json
    import os

    from facepipe.orchestration import modelarts

    spec = modelarts.TrainingJobSpec(
        step=args.step, output=args.output, flavor=args.flavor or os.environ.get("MODELARTS_FLAVOR", ""),
        inputs={n: getattr(args, n) for n in modelarts.input_names(args.step)}, sets=args.sets, job=args.job,
        name=args.name, node_count=args.nodes, gpus_per_node=args.gpus_per_node, lock=args.lock)
    request = modelarts.build_request(spec)
    if args.dry_run:
        print(json.dumps(modelarts.without_nulls(request.body.to_dict()), indent=2, sort_keys=True, default=str))
        return 0
    job = modelarts.submit(request)
    print(f"ModelArts training job {job['name']} created (id {job['id']}); output: {args.output}")
    if args.wait:
        return 0 if modelarts.follow(job["id"]) == "Completed" else 1
    return 0
