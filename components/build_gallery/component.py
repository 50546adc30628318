"""KFP component `build_gallery`: enrol the data's identities with the trained detector and recognizer."""

from components import component

# Generated from the Step record: one typed input per config key (`build_gallery__<key>`), see components/__init__.py.
build_gallery = component("build_gallery")
