"""KFP component `pack`: the pipeline's data source (given data or synthesized) packed into RecordIO."""

from components import component

# Generated from the Step record: one typed input per config key (`pack__<key>`), see components/__init__.py.
pack = component("pack", hosts=("synth",))
