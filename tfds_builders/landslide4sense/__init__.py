"""TFDS builder `landslide4sense`: see `landslide4sense.py`."""
from tfds_builders.landslide4sense.landslide4sense import Landslide4sense
__all__ = ["Landslide4sense"]
