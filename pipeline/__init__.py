"""The facepipe Kubeflow pipeline (pipeline.py) and its compiler entry point (compile.py)."""
