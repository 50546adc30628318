"""`facepipe train-recognition DATA_PATH MODEL_OUTPUT_PATH`: train (or resume) a face recognizer.

Under `torchrun --nproc_per_node N -m facepipe.cli train-recognition ...` every process runs this
command; only rank 0 talks to MLflow. Logged to MLflow whenever MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

HELP = "train a face recognizer (IResNet/MobileFaceNet, margin or metric losses) on a packed .rec dataset"


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="folder with PREFIX.rec/.idx and property (from `facepipe pack`), "
                                          "optionally *.bin verification sets")
    parser.add_argument("model_output_path", help="output folder; rerunning with the same folder resumes")
    parser.add_argument("--config", help="job YAML file (its 'train_recognition' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set backbone=iresnet18")
    parser.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    from facepipe.config import load_config
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.tracking import MlflowLogger, NullLogger, tracking_enabled

    cfg = load_config(RecognitionTrainConfig, args.config, args.set, section="train_recognition")
    from facepipe.recognition.train import train_recognition

    if tracking_enabled() and int(os.environ.get("RANK", "0")) == 0:
        import mlflow

        with mlflow.start_run(run_name=args.run_name or Path(args.model_output_path).name):
            logger = MlflowLogger()
            logger.set_tags({"facepipe.step": "train_recognition", "data_path": args.data_path})
            metrics = train_recognition(cfg, args.data_path, args.model_output_path, logger=logger)
    else:
        metrics = train_recognition(cfg, args.data_path, args.model_output_path, logger=NullLogger())
    if metrics:
        print(json.dumps(metrics, sort_keys=True))
    return 0
