"""TFDS builder `taiwan`: see `taiwan.py`."""
from tfds_builders.taiwan.taiwan import Taiwan
__all__ = ["Taiwan"]
