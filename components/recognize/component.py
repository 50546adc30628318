"""KFP component `recognize` (standalone): who is in these images, against a gallery."""

from facepipe.orchestration.params import component

# Generated from the Step record: one typed input per config key (`recognize__<key>`), see params.component.
recognize = component("recognize")
