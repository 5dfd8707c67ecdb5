"""`china`: landslide patches of the paper's china site, built from `<manual_dir>/china/`."""

from tfds_builders import site_builder


class China(site_builder.SiteBuilder):
  """Patches of Shuzheng Valley (Jiuzhaigou), China (configs p32, p64, p128)."""
  SITE = "china"
