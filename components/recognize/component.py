"""KFP component `recognize` (standalone): who is in these images, against a gallery."""

from components import component

# Generated from the Step record: one typed input per config key (`recognize__<key>`), see components/__init__.py.
recognize = component("recognize")
