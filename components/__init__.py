"""KFP components, one folder per step: component.py (thin wrapper), README.md, test_component.py."""
