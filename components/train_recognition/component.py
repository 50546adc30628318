"""KFP component `train_recognition`: an ArcFace-family recognizer trained on the packed RecordIO set."""

from components import component

# Generated from the Step record: one typed input per config key (`train_recognition__<key>`), see components/__init__.py.
train_recognition = component("train_recognition")
