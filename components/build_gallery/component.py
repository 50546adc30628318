"""KFP component `build_gallery`: enrol the data's identities with the trained detector and recognizer."""

from facepipe.orchestration.params import component

# Generated from the Step record: one typed input per config key (`build_gallery__<key>`), see params.component.
build_gallery = component("build_gallery")
