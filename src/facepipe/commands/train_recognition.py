"""`facepipe train-recognition DATA_PATH MODEL_OUTPUT_PATH`: train (or resume) a face recognizer.

Under `torchrun --nproc_per_node N -m facepipe.cli train-recognition ...` every process runs this
command; only rank 0 talks to MLflow. Logged to MLflow whenever MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

HELP = "train a face recognizer (IResNet/MobileFaceNet, margin or metric losses) on a packed .rec dataset"


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="folder (or s3:// / obs:// URI) with PREFIX.rec/.idx and property "
                                          "(from `facepipe pack`), optionally *.bin verification sets")
    parser.add_argument("model_output_path", help="output folder (or URI, published at the end); rerunning "
                                                  "with the same local folder resumes from its checkpoints")
    parser.add_argument("--config", help="job YAML file (its 'train_recognition' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set backbone=iresnet18")
    parser.add_argument("--run-name", help="MLflow run name (default: train_recognition)")


def run(args) -> int:
    import contextlib
    import json
    import os

    from facepipe import storage
    from facepipe.config import load_config
    from facepipe.errors import ConfigError
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.tracking import command_logger

    cfg = load_config(RecognitionTrainConfig, args.config, args.set, section="train_recognition")
    from facepipe.recognition.train import train_recognition

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    remote_out = not storage.parse_uri(args.model_output_path).is_local
    if remote_out and world > 1:
        raise ConfigError(f"MODEL_OUTPUT_PATH {args.model_output_path}: under torchrun every process writes "
                          f"checkpoint shards, so it must be a local or shared folder")
    with contextlib.ExitStack() as stack:
        data = stack.enter_context(storage.localize(args.data_path))
        # a remote output is written locally and published when training finishes (resume needs a
        # local or shared MODEL_OUTPUT_PATH: the checkpoints live there)
        out = stack.enter_context(storage.output_dir(args.model_output_path)) if rank == 0 or remote_out \
            else args.model_output_path
        logger = stack.enter_context(command_logger(
            args.run_name or "train_recognition",
            {"facepipe.step": "train_recognition", "data_path": args.data_path,
             "model_output_path": args.model_output_path}, enabled=rank == 0))
        metrics = train_recognition(cfg, data, out, logger=logger)
    if metrics:
        print(json.dumps(metrics, sort_keys=True))
    return 0
