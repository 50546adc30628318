"""`facepipe train-detection DATA_PATH MODEL_OUTPUT_PATH`: train RetinaFace on a label.txt tree.

DATA_PATH holds `train/images/ + train/label.txt` (and optionally `val/`); it may be a local path,
file://, s3:// or obs:// URI, as may MODEL_OUTPUT_PATH. Config: section `train_detection` of a job
file, then `--set key=value`, then the flags. Rerunning into the same local output resumes from its
last checkpoint. Multi-process: `torchrun --nproc_per_node N -m facepipe.cli train-detection ...`.
"""

from __future__ import annotations

HELP = "train a RetinaFace face detector (MobileNet-0.25 or ResNet-50) with 5 landmarks"

_FLAGS = {"backbone": "backbone", "epochs": "epochs", "batch_size": "batch_size", "image_size": "image_size",
          "lr": "lr", "workers": "workers", "time_budget_min": "time_budget_min"}


def add_arguments(parser) -> None:
    parser.add_argument("data_path", help="detection data: train/images + train/label.txt (val/ optional)")
    parser.add_argument("model_output_path", help="output folder or URI (model.pt, model.onnx, metrics.json, plots)")
    parser.add_argument("--backbone", choices=["mobilenet0.25", "resnet50"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--image-size", type=int, dest="image_size")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--time-budget-min", type=float, dest="time_budget_min",
                        help="stop after this many minutes, the LR schedule stretched to fit")
    parser.add_argument("--config", help="job YAML file (its 'train_detection' section, or the whole file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set schedule=cosine")


def run(args) -> int:
    import json
    import os

    from facepipe.config import load_config, parse_sets
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.edge import run_command

    sets = parse_sets(args.set)
    sets.update({key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None})
    cfg = load_config(DetectionTrainConfig, args.config, sets, section="train_detection")
    main_process = int(os.environ.get("RANK", 0)) == 0
    metrics = run_command("train_detection", cfg, {"data_dir": args.data_path}, args.model_output_path,
                          main_process=main_process)
    if main_process:
        keys = [k for k in metrics if k.startswith(("val.ap50", "train.steps", "train.final_loss", "onnx"))]
        print(json.dumps({k: metrics[k] for k in sorted(keys)}))
        print(f"model: {args.model_output_path}/model.pt")
    return 0
