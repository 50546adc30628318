"""facepipe: train and ship face recognition systems (detect -> align -> embed -> match)."""

__version__ = "0.1.0"
