"""The pipeline's steps: name -> config class and step function (import paths, loaded lazily).

This table is what the CLI, the KFP components, `facepipe run --set step.key=value` and
`facepipe rerun STEP` agree on. Step functions follow docs/architecture.md:
`fn(config, <inputs...>, out_dir, logger=NullLogger()) -> dict`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    config: str    # "module:Class"
    function: str  # "module:function"

    def config_class(self):
        return _resolve(self.config)

    def step_function(self):
        return _resolve(self.function)


def _resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


STEPS = {
    s.name: s
    for s in [
        Step("synth", "facepipe.data.synth:SynthConfig", "facepipe.data.synth:synthesize"),
        Step("pack", "facepipe.data.pack:PackConfig", "facepipe.data.pack:pack"),
        Step("train_detection", "facepipe.detection.config:DetectionTrainConfig",
             "facepipe.detection.train:train_detection"),
        Step("train_recognition", "facepipe.recognition.config:RecognitionTrainConfig",
             "facepipe.recognition.train:train_recognition"),
        Step("build_gallery", "facepipe.gallery.build:GalleryConfig", "facepipe.gallery.build:build_gallery"),
        Step("evaluate", "facepipe.evaluation.pipeline_eval:EvaluateConfig",
             "facepipe.evaluation.pipeline_eval:evaluate_pipeline"),
        Step("recognize", "facepipe.gallery.recognize:RecognizeConfig", "facepipe.gallery.recognize:recognize"),
    ]
}
