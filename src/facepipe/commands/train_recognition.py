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
    import json
    import os

    from facepipe import storage
    from facepipe.config import load_config
    from facepipe.edge import run_command
    from facepipe.errors import ConfigError
    from facepipe.recognition.config import RecognitionTrainConfig

    cfg = load_config(RecognitionTrainConfig, args.config, args.set, section="train_recognition")

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    remote_out = not storage.parse_uri(args.model_output_path).is_local
    if remote_out and world > 1:
        raise ConfigError(f"MODEL_OUTPUT_PATH {args.model_output_path}: under torchrun every process writes "
                          f"checkpoint shards, so it must be a local or shared folder")
    # A remote output is written locally and published when training finishes (resume needs a
    # local or shared MODEL_OUTPUT_PATH: the checkpoints live there).
    metrics = run_command("train_recognition", cfg, {"data_dir": args.data_path}, args.model_output_path,
                          run_name=args.run_name or "", main_process=rank == 0)
    if metrics:
        print(json.dumps(metrics, sort_keys=True))
    return 0
