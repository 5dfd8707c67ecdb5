"""Raster I/O, derived layers, splitting and patching: from raw site inputs to patch arrays."""
