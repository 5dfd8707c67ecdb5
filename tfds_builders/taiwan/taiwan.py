"""`taiwan`: landslide patches of the paper's taiwan site, built from `<manual_dir>/taiwan/`."""

from tfds_builders import site_builder


class Taiwan(site_builder.SiteBuilder):
  """Patches of Western Taitung, Taiwan (configs p32, p64, p128)."""
  SITE = "taiwan"
