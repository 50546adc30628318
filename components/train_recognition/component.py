"""KFP component `train_recognition`: an ArcFace-family recognizer trained on the packed RecordIO set."""

from facepipe.orchestration.params import component

# Generated from the Step record: one typed input per config key (`train_recognition__<key>`), see params.component.
train_recognition = component("train_recognition")
