"""KFP component `train_detection`: a RetinaFace detector trained on the data's detection/ scenes."""

from components import component

# Generated from the Step record: one typed input per config key (`train_detection__<key>`), see components/__init__.py.
train_detection = component("train_detection")
