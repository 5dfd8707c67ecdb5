"""`japan`: landslide patches of the paper's japan site, built from `<manual_dir>/japan/`."""

from tfds_builders import site_builder


class Japan(site_builder.SiteBuilder):
  """Patches of Eastern Iburi, Hokkaido, Japan (configs p32, p64, p128)."""
  SITE = "japan"
