"""The figures say what they show: the quicklook legend names the unscored (white) pixels, and the
transferability heat map keeps its colour bar clear of its title even with one scenario."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landslide_jax import evaluate, sweep  # noqa: E402


@pytest.fixture
def kept_figures(monkeypatch):
  """The figures the code closes, kept open for inspection."""
  kept = []
  monkeypatch.setattr(plt, "close", kept.append)
  yield kept
  monkeypatch.undo()
  plt.close("all")


def test_quicklook_legend_names_unscored_pixels(tmp_path, kept_figures):
  valid = np.ones((40, 60), bool)
  valid[:10] = False  # a cloud
  truth = np.zeros_like(valid)
  truth[20:30, 20:30] = True
  predicted = np.zeros_like(valid)
  predicted[22:32, 22:32] = True
  evaluate.quicklook(tmp_path / "q.png", None, predicted, truth, valid, "china test area")
  (fig,) = kept_figures
  labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert labels == [*evaluate.COLOURS, evaluate.NOT_SCORED_LABEL]
  assert "not scored" in evaluate.NOT_SCORED_LABEL
  canvas = fig.axes[0].get_images()[0].get_array()
  assert (np.asarray(canvas)[:10] == 1.0).all()  # the cloud is the white the legend names


@pytest.mark.parametrize("scenarios", [("china",), ("all", "taiwan", "china", "japan")])
def test_heat_map_colour_bar_clears_the_title(tmp_path, kept_figures, scenarios):
  matrix = np.linspace(0.2, 0.9, len(scenarios) * len(sweep.TEST_SETS)).reshape(len(scenarios), -1)
  sweep._heat_map(tmp_path / "t.png", matrix, scenarios)  # pylint: disable=protected-access
  (fig,) = kept_figures
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  heat, bar = fig.axes
  title = heat.title.get_window_extent(renderer)
  bar_box = bar.get_window_extent(renderer)
  assert bar_box.y1 <= title.y0 + 1 or bar_box.x0 >= title.x1 - 1, (bar_box, title)
  assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
