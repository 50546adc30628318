"""KFP component `evaluate`: verification, identification and detection metrics of the trained pipeline."""

from components import component

# Generated from the Step record: one typed input per config key (`evaluate__<key>`), see components/__init__.py.
evaluate = component("evaluate")
