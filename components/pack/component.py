"""KFP component `pack`: the pipeline's data source (given data or synthesized) packed into RecordIO."""

from facepipe.orchestration.params import component

# Generated from the Step record: one typed input per config key (`pack__<key>`), see params.component.
pack = component("pack", hosts=("synth",))
