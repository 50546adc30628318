"""`facepipe rerun STEP --from RUN_ID [--set key=value ...]`: rerun one step and its downstream steps, reusing the rest."""

from __future__ import annotations

HELP = "rerun STEP and its downstream steps of an earlier local run with changed parameters"


def add_arguments(parser) -> None:
    from facepipe.commands.run import add_common

    parser.add_argument("step", help="step to rerun (pack, train_detection, train_recognition, build_gallery, "
                                     "evaluate; synth reruns pack)")
    parser.add_argument("--from", dest="from_run", required=True, metavar="RUN_ID",
                        help="the earlier run (id or unique prefix; `facepipe runs` lists them)")
    add_common(parser)


def run(args) -> int:
    from facepipe.commands.run import print_summary
    from facepipe.orchestration import local

    record = local.rerun(args.step, args.from_run, args.sets, root=args.runs_dir, pipeline=args.pipeline,
                         track=not args.no_track, experiment=args.experiment, runner=args.runner,
                         verbose=args.verbose)
    print_summary(record, local.runs_dir(args.runs_dir))
    return 0
