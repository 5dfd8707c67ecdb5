"""landslide_jax: landslide mapping from Sentinel-2 and DEM data with JAX/Flax."""
