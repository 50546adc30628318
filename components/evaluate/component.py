"""KFP component `evaluate`: verification, identification and detection metrics of the trained pipeline."""

from facepipe.orchestration.params import component

# Generated from the Step record: one typed input per config key (`evaluate__<key>`), see params.component.
evaluate = component("evaluate")
