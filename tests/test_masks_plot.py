"""jattn.masks.plot draws masks and block masks (matplotlib, Agg)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from jattn import masks as M

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def _shaded(ax):
  return [p for p in ax.patches if p.get_alpha()]


def test_plot_block_mask_shades_full_and_partial_blocks():
  bm = M.create_block_mask(M.causal(), None, None, 40, 40, 16)
  fig = M.plot(bm)
  assert isinstance(fig, Figure)
  ax = fig.axes[0]
  # 3x3 blocks: 3 partial on the diagonal (the last one is cut short), the
  # 2 below it in the last (short) row partial too, 1 full.
  colors = [p.get_facecolor()[:3] for p in _shaded(ax)]
  assert len(colors) == 6
  green = matplotlib.colors.to_rgb("tab:green")
  assert sum(np.allclose(c, green) for c in colors) == 1
  image = ax.images[0].get_array()
  np.testing.assert_array_equal(np.asarray(image, bool),
                                np.tril(np.ones((40, 40), bool)))
  assert "causal()" in ax.get_title()
  plt.close(fig)


def test_plot_mask_function_and_dense_array_and_given_axes():
  am = np.ones((2, 24), bool)
  am[1, 20:] = False
  mask = M.and_masks(M.sliding_window_causal(6), M.padding(am))
  fig = M.plot(mask, batch=1, q_len=24, kv_len=24, block_size=(8, 4))
  image = np.asarray(fig.axes[0].images[0].get_array(), bool)
  np.testing.assert_array_equal(
      image, np.asarray(M.create_mask(mask, None, None, 24, 24))[1, 0])
  plt.close(fig)
  fig = M.plot(mask, q_len=10, kv_len=12)  # no block structure
  assert not _shaded(fig.axes[0])
  plt.close(fig)
  fig2, ax = plt.subplots()
  assert M.plot(np.eye(5, dtype=bool), ax=ax) is fig2
  plt.close(fig2)


def test_plot_rejects_bad_input():
  with pytest.raises(ValueError, match="q_len"):
    M.plot(M.causal())
  with pytest.raises(ValueError, match="shape"):
    M.plot(np.ones((2, 3, 4), bool))


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
  with pytest.raises(ImportError, match="pip install matplotlib"):
    M.plot(M.causal(), q_len=4, kv_len=4)
