"""Pictures of masks and block masks (matplotlib, an optional dependency)."""

from __future__ import annotations

import numpy as np

from jattn.masks._block_mask import (EMPTY, FULL, PARTIAL, BlockMask,
                                     create_block_mask)
from jattn.masks._materialize import create_mask
from jattn.masks._mods import as_mask_mod


def _pyplot():
  try:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "jattn.masks.plot needs matplotlib, an optional dependency: "
        "pip install matplotlib (or pip install 'jattn[dev]')") from e
  return plt


def plot(mask_or_block_mask, batch: int = 0, head: int = 0, ax=None, *,
         q_len: int | None = None, kv_len: int | None = None,
         block_size=None, q_offset=0, kv_offset=0, title: str | None = None):
  """Draws the element mask of one (batch, head) and its block structure.

  ``mask_or_block_mask`` is a `BlockMask` (lengths, block size and offsets
  come from it), a mask (`MaskMod` or plain function; ``q_len`` and
  ``kv_len`` needed, ``block_size`` optional) or a bool array ``[T, S]`` or
  ``[B, H, T, S]``. Kept pairs are dark; with a block structure, full blocks
  are shaded green, partial ones orange, and block boundaries drawn.

  Returns the matplotlib ``Figure`` (drawn on ``ax`` when given).
  """
  plt = _pyplot()
  blocks = None
  bm = None
  if isinstance(mask_or_block_mask, BlockMask):
    bm = mask_or_block_mask
  elif callable(mask_or_block_mask):
    if q_len is None or kv_len is None:
      raise ValueError("plot of a mask function needs q_len and kv_len")
    mask = as_mask_mod(mask_or_block_mask)
    if block_size is not None:
      bm = create_block_mask(mask, None, None if head == 0 else head + 1,
                             q_len, kv_len, block_size, q_offset=q_offset,
                             kv_offset=kv_offset)
    else:
      dense = np.asarray(create_mask(mask, None, head + 1, q_len, kv_len,
                                     q_offset=q_offset, kv_offset=kv_offset))
  else:
    dense = np.asarray(mask_or_block_mask)
    if dense.ndim == 2:
      dense = dense[None, None]
    if dense.ndim != 4:
      raise ValueError(f"a dense mask to plot must be [T, S] or [B, H, T, S], "
                       f"got shape {dense.shape}")
  if bm is not None:
    dense = np.asarray(bm.to_dense())
    blocks = np.asarray(bm.to_block_dense())
  pick = lambda a: a[min(batch, a.shape[0] - 1), min(head, a.shape[1] - 1)]
  elem = pick(dense).astype(bool)
  n_q, n_kv = elem.shape

  if ax is None:
    size = 6.0
    aspect = n_q / max(n_kv, 1)
    fig, ax = plt.subplots(figsize=(size, max(2.0, min(12.0, size * aspect))))
  else:
    fig = ax.figure
  ax.imshow(elem, cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest",
            origin="upper", extent=(-0.5, n_kv - 0.5, n_q - 0.5, -0.5))
  if blocks is not None:
    bq, bkv = bm.block_size
    grid = pick(blocks)
    colors = {FULL: ("tab:green", 0.25), PARTIAL: ("tab:orange", 0.35)}
    for i, j in zip(*np.nonzero(grid != EMPTY)):
      color, alpha = colors[int(grid[i, j])]
      ax.add_patch(plt.Rectangle(
          (j * bkv - 0.5, i * bq - 0.5), min(bkv, n_kv - j * bkv),
          min(bq, n_q - i * bq), facecolor=color, alpha=alpha, linewidth=0))
    for x in range(0, n_kv + 1, bkv):
      ax.axvline(x - 0.5, color="tab:blue", linewidth=0.6)
    for y in range(0, n_q + 1, bq):
      ax.axhline(y - 0.5, color="tab:blue", linewidth=0.6)
    n_full, n_part = int(np.sum(grid == FULL)), int(np.sum(grid == PARTIAL))
    ax.legend(handles=[
        plt.Rectangle((0, 0), 1, 1, color="tab:green", alpha=0.4,
                      label=f"full blocks ({n_full})"),
        plt.Rectangle((0, 0), 1, 1, color="tab:orange", alpha=0.5,
                      label=f"partial blocks ({n_part})")],
              loc="upper right", fontsize="small", framealpha=0.8)
  ax.set_xlim(-0.5, n_kv - 0.5)
  ax.set_ylim(n_q - 0.5, -0.5)
  ax.set_xlabel("key index")
  ax.set_ylabel("query index")
  if title is None and bm is not None and bm.mask_mod is not None:
    title = repr(bm.mask_mod)
  elif title is None and callable(mask_or_block_mask):
    title = repr(as_mask_mod(mask_or_block_mask))
  if title:
    ax.set_title(title if len(title) <= 70 else title[:67] + "...",
                 fontsize="medium")
  return fig
