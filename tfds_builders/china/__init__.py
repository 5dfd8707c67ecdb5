"""TFDS builder `china`: see `china.py`."""
from tfds_builders.china.china import China
__all__ = ["China"]
