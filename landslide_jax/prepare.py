"""Builds the TFDS patch datasets of the requested sites and patch sizes (`python -m launch.prepare`).

Datasets are built in a staging folder and moved into place only when complete, so a failed build leaves
nothing half-written and never touches a dataset that was already there. One process at a time builds a
given dataset (a lock per dataset): a second one waits, then finds the first one's dataset and reuses it.
A staging folder left by a killed build is removed by the next run; a live build's is never touched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

from landslide_jax import constants, files
from landslide_jax.data import demo, landslide4sense, raster_io, site_inputs
from landslide_jax.data.normalization import read_metadata
from landslide_jax.errors import InputError

PREPARABLE = constants.SITE_NAMES + ("landslide4sense",)
DEMO_SEED = 0
DEMO_DIRNAME = "landslide_jax_demo_raw"
DEMO_DATASETS_DIRNAME = "landslide_jax_demo"
STAGING_PREFIX = ".staging-"


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """Where a prepared dataset lives and what its metadata says."""
  site: str
  patch: int
  path: Path
  metadata: dict
  rebuilt: bool


def default_data_dir() -> Path:
  """TFDS's own default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def demo_manual_dir(data_dir: str | os.PathLike, sites: tuple[str, ...], scale: float) -> Path:
  """Writes (or reuses) the built-in synthetic demo scenes and says so, loudly, on stderr."""
  out = Path(data_dir) / DEMO_DIRNAME / f"scale{scale:g}-seed{DEMO_SEED}"
  print(f"landslide_jax: no --manual_dir given, so using the built-in SYNTHETIC demo scenes "
        f"(scale {scale:g}) in {out}; results on them say nothing about real landslides.",
        file=sys.stderr, flush=True)
  demo.write_demo_sites(out, sites=sites, scale=scale, seed=DEMO_SEED)
  return out


def datasets_dir(data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None,
                 demo_scale: float) -> Path:
  """Where datasets are written: `data_dir` for real inputs; for the built-in demo scenes (no
  `manual_dir`) a folder of their own per demo scale, so switching `--demo_scale` just works and demo
  datasets never collide with datasets of real scenes."""
  data_dir = Path(data_dir).expanduser()
  if manual_dir is not None:
    return data_dir
  return data_dir / DEMO_DATASETS_DIRNAME / f"scale{demo_scale:g}-seed{DEMO_SEED}"


def _built(path: Path) -> bool:
  return (path / "dataset_info.json").is_file() and (path / "metadata.json").is_file()


def _install(staged: Path, target: Path) -> None:
  """Moves a complete staged dataset to `target`, replacing an old one only once the new one is there.

  Called with the dataset's lock held (`_dataset_lock`), so no other process installs it meanwhile.
  """
  target.parent.mkdir(parents=True, exist_ok=True)
  backup = None
  if target.exists():
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, backup)
  os.replace(staged, target)
  if backup is not None:
    shutil.rmtree(backup)


def _recover_install(target: Path) -> None:
  """Finishes an installation a kill interrupted (with the dataset's lock held, so none is running): a
  backup whose replacement never arrived is put back; one whose replacement did is removed."""
  for backup in sorted(target.parent.glob(f".{target.name}.old-*")):
    if not target.exists():
      os.replace(backup, target)
      files.note(f"{target}: put back the dataset an interrupted rebuild had moved aside")
    else:
      shutil.rmtree(backup, ignore_errors=True)
      files.note(f"removed {backup}: the old copy of a dataset whose rebuild was interrupted")


def _dataset_lock(data_dir: Path, target: Path) -> files.FileLock:
  """The lock of one dataset, taken before building it: waits (saying so) while another process builds it.

  The lock file sits in `data_dir` (not beside the dataset, whose folders may not exist yet) and is
  removed on release, so a data dir holds only datasets.
  """
  try:
    parts = target.relative_to(data_dir).parts
  except ValueError:
    parts = target.parts[-3:]  # <site>/<config>/<version>
  name = "-".join(parts)
  lock = files.FileLock(data_dir / f".lock-{name}")
  said = False
  while True:
    try:
      lock.acquire(blocking=said)
      return lock
    except files.LockBusy as busy:
      files.note(f"{target}: {files.describe_holder(busy.holder)} is building this dataset; waiting for it")
      said = True
    except FileNotFoundError:
      # The data dir went: a failed first build by another process removes the empty one it made.
      data_dir.mkdir(parents=True, exist_ok=True)


def _reusable(site: str, patch: int, target: Path, current_hash: str, channels: tuple[str, ...],
              overwrite: bool) -> PreparedDataset | None:
  """The dataset at `target` if it was built from the current raw inputs; None if there is none, or if
  it is stale and `overwrite`.

  Raises:
    InputError: a stale dataset without `overwrite`.
  """
  if not _built(target):
    return None
  metadata = read_metadata(target)
  if metadata.get("input_hash") == current_hash:
    return PreparedDataset(site, patch, target, metadata, rebuilt=False)
  if not overwrite:
    # Named as a command: launch.train and launch.sweep reach here too, and have no --overwrite.
    chosen = "" if tuple(channels) == constants.DEFAULT_CHANNELS else f" --channels={','.join(channels)}"
    raise InputError(target, "dataset was built from different raw inputs",
                     f"rebuild it with python -m launch.prepare --site={site} --patch={patch}{chosen} "
                     "--overwrite (and the run's --data_dir, --manual_dir or --demo_scale), or use "
                     "another --data_dir")
  return None


def input_hash(name: str, manual_dir: str | os.PathLike) -> str:
  """Content hash of the raw inputs a dataset is built from (a paper site or 'landslide4sense')."""
  if name == "landslide4sense":
    splits, _ = landslide4sense.plan_splits(landslide4sense.find_root(manual_dir))
    return landslide4sense.content_hash(splits)
  return site_inputs.find_site_inputs(Path(manual_dir) / name).content_hash()


def _dataset_bytes_bound(name: str, manual_dir: str | os.PathLike, channels: tuple[str, ...]) -> int:
  """At most every input pixel once (windows never overlap): float32 channels plus the mask and valid
  bytes. Read from the files' headers, no pixel read."""
  per_pixel = 4 * len(channels) + 2
  if name == "landslide4sense":
    splits, _ = landslide4sense.plan_splits(landslide4sense.find_root(manual_dir))
    return per_pixel * constants.L4S_PATCH**2 * sum(len(images) for images in splits.values())
  inputs = site_inputs.find_site_inputs(Path(manual_dir) / name)
  bands = tuple(c for c in channels if c in constants.SENTINEL2_BANDS) or constants.PAPER_BANDS
  rows, cols = raster_io.scene_grid(inputs, bands).shape
  return per_pixel * rows * cols


def prepare_site(site: str, patch: int, data_dir: str | os.PathLike, manual_dir: str | os.PathLike,
                 channels: tuple[str, ...] = constants.DEFAULT_CHANNELS,
                 overwrite: bool = False,
                 max_nodata_fraction: float = constants.MAX_NODATA_FRACTION) -> PreparedDataset:
  """Builds (or reuses) one dataset (a paper site or 'landslide4sense') at one patch size.

  An existing dataset is reused when it was built from the same raw inputs (same content hash). If the
  inputs changed, it is an error unless `overwrite`, in which case the new dataset replaces the old one
  only after it was built completely. Safe to call from several processes (or threads) at once: one
  builds, the others wait for it and reuse its dataset.

  Raises:
    InputError: unusable raw inputs, or stale dataset without `overwrite`.
  """
  import tfds_builders  # pylint: disable=import-outside-toplevel  (pulls in TFDS only when building)

  data_dir = Path(data_dir)
  config = tfds_builders.config_for(site, patch, channels, max_nodata_fraction)
  builder = tfds_builders.get_builder(site, config, data_dir)
  target = Path(builder.data_path)
  current_hash = input_hash(site, manual_dir)
  # Leftovers of killed builds; a live build's staging folder is locked and stays.
  files.remove_stale(data_dir, (STAGING_PREFIX,))
  reused = _reusable(site, patch, target, current_hash, channels, overwrite)
  if reused is not None:
    return reused

  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  created = not data_dir.exists()
  data_dir.mkdir(parents=True, exist_ok=True)
  lock = _dataset_lock(data_dir, target)
  try:
    _recover_install(target)
    # Another process may have built it while we waited for the lock: then it is ours to reuse.
    reused = _reusable(site, patch, target, current_hash, channels, overwrite)
    if reused is not None:
      return reused
    files.require_free_space(data_dir, _dataset_bytes_bound(site, manual_dir, channels),
                             f"the {site} p{patch} dataset", "--data_dir")
    with files.staging_dir(data_dir, STAGING_PREFIX) as staging:
      staged_builder = tfds_builders.get_builder(site, config, staging.path)
      # TFDS's nested progress bars turn logs into escape-code soup; we print one line per dataset.
      tfds.disable_progress_bar()
      staged_builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
      _install(Path(staged_builder.data_path), target)
  finally:
    lock.release()
    if created:
      _remove_empty_data_dir(data_dir)
  return PreparedDataset(site, patch, target, read_metadata(target), rebuilt=True)


def _remove_empty_data_dir(data_dir: Path) -> None:
  """A failed first build leaves no trace, not even an empty data dir (unless another process uses it)."""
  try:
    if not any(data_dir.iterdir()):
      data_dir.rmdir()
  except OSError:
    pass  # gone already, or something arrived meanwhile


def format_summary(prepared: list[PreparedDataset]) -> str:
  """A table of patch counts per split and landslide shares, one row per dataset."""
  lines = [f"{'site':<15} {'patch':>5} {'train':>6} {'val':>5} {'test':>5} {'dropped':>7} "
           f"{'slide% train/val/test':>22}  source"]
  for p in prepared:
    areas = p.metadata["areas"]
    dropped = sum(a["dropped_nodata"] for a in areas.values())
    shares = "/".join(f"{100 * areas[s]['landslide_share']:.1f}" for s in ("train", "validation", "test"))
    lines.append(f"{p.site:<15} {p.patch:>5} {areas['train']['patches']:>6} "
                 f"{areas['validation']['patches']:>5} {areas['test']['patches']:>5} {dropped:>7} "
                 f"{shares:>22}  {p.metadata['source']}")
  return "\n".join(lines)


def prepare(sites: tuple[str, ...], patches: tuple[int, ...], data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None,
            channels: tuple[str, ...] = constants.DEFAULT_CHANNELS,
            demo_scale: float = 1.0, overwrite: bool = False,
            max_nodata_fraction: float = constants.MAX_NODATA_FRACTION) -> list[PreparedDataset]:
  """Builds every (site, patch) dataset; uses the synthetic demo scenes when `manual_dir` is None."""
  data_dir = Path(data_dir) if data_dir else default_data_dir()
  root = datasets_dir(data_dir, manual_dir, demo_scale)
  if manual_dir is None:
    manual_dir = demo_manual_dir(data_dir, tuple(sites), demo_scale)
  prepared = []
  for site in sites:
    for patch in patches:
      result = prepare_site(site, patch, root, manual_dir, channels, overwrite,
                            max_nodata_fraction)
      verb = "built" if result.rebuilt else "up to date"
      print(f"{site} p{patch}: {verb} at {result.path}", flush=True)
      prepared.append(result)
  return prepared


def prepare_from_flags(site: str, patches: list[str], data_dir: str | None, manual_dir: str | None,
                       channels: str, demo_scale: float, overwrite: bool,
                       max_nodata_fraction: float) -> list[PreparedDataset]:
  """`launch.prepare`: checks the flag values, builds, prints the patch-count table."""
  try:
    valid = constants.L4S_CHANNELS if site == "landslide4sense" else constants.SITE_CHANNELS
    parsed = constants.parse_channels(channels, valid)
  except ValueError as err:
    raise InputError(None, f"--channels: {err}", "pass names from the list above") from None
  if not 0.0 <= max_nodata_fraction <= 1.0:
    raise InputError(None, f"--max_nodata_fraction={max_nodata_fraction} is outside [0, 1]",
                     "pass a share such as 0.5")
  if demo_scale <= 0:
    raise InputError(None, f"--demo_scale={demo_scale} must be positive", "pass e.g. 1.0 or 0.1")
  if site == "landslide4sense" and manual_dir is None:
    raise InputError(None, "--site=landslide4sense needs --manual_dir",
                     "pass the folder holding TrainData/ (e.g. ../shared/data/landslide4sense_sample)")
  sites = constants.SITE_NAMES if site == "all" else (site,)
  prepared = prepare(sites, tuple(int(p) for p in patches), data_dir, manual_dir, parsed, demo_scale,
                     overwrite, max_nodata_fraction)
  print(format_summary(prepared), flush=True)
  return prepared
