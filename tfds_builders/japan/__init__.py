"""TFDS builder `japan`: see `japan.py`."""
from tfds_builders.japan.japan import Japan
__all__ = ["Japan"]
