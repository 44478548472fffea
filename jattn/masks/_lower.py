"""Structured masks lowered to the call's native constraints.

A mask built only from `causal`, the window constructors, `bidirectional` and `segments`,
combined with `and_masks` (or a `BlockMask` built from one), says nothing that
`is_causal` / `sliding_window` / `segment_ids` cannot say. Passed as those, every backend
can use its native path: cuDNN its causal and window flags instead of a dense bias, the
Hopper kernel its block ranges instead of refusing a mask function. The lowering is exact,
so it is applied before backend selection and nobody has to write the mask twice.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jattn.masks._block_mask import BlockMask
from jattn.masks._mods import (And, Bidirectional, Causal, LocalWindow, MaskMod, Segments,
                               SlidingWindowBidirectional, SlidingWindowCausal, _is_static_int)


def _leaves(mask: MaskMod):
  if isinstance(mask, And):
    for m in mask.masks:
      yield from _leaves(m)
  else:
    yield mask


def _tighter(a, b):
  """The smaller of two window sides (None = unbounded)."""
  if a is None:
    return b
  if b is None:
    return a
  return min(a, b)


def lower_mask(mask: Any, *, is_causal: bool, sliding_window, segment_ids, q_offset,
               kv_offset, batch: int, q_len: int, kv_len: int) -> dict | None:
  """The call's `(mask, is_causal, sliding_window, segment_ids, q_offset, kv_offset)` with a
  structured `mask` folded into the other five, or None when it cannot be folded exactly
  (then the call is left as it is).

  `sliding_window` must already be normalized (`(left, right)` or None). Segments are folded
  only when positions are row / column indices (offsets 0) and the id arrays cover exactly
  the T queries and S keys; a `BlockMask` only with static integer offsets and call offsets of
  0 (its offsets become the call's).
  """
  if isinstance(mask, BlockMask):
    if (mask.mask_mod is None or not isinstance(mask.mask_mod, MaskMod)
        or not (_is_static_int(mask.q_offset) and _is_static_int(mask.kv_offset))
        or not (_is_static_int(q_offset) and _is_static_int(kv_offset))
        or (q_offset, kv_offset) != (0, 0)):
      return None
    q_offset, kv_offset = int(mask.q_offset), int(mask.kv_offset)
    mask = mask.mask_mod
  elif not isinstance(mask, MaskMod):
    return None
  causal = bool(is_causal)
  left, right = sliding_window if sliding_window is not None else (None, None)
  windowed = sliding_window is not None
  segs = None
  for leaf in _leaves(mask):
    if isinstance(leaf, Bidirectional):
      continue
    if isinstance(leaf, Causal):
      causal = True
    elif isinstance(leaf, SlidingWindowCausal):       # (q - w, q]
      causal, windowed = True, True
      left, right = _tighter(left, leaf.window - 1), _tighter(right, 0)
    elif isinstance(leaf, SlidingWindowBidirectional):
      windowed = True
      left, right = _tighter(left, leaf.window), _tighter(right, leaf.window)
    elif isinstance(leaf, LocalWindow):
      windowed = True
      left, right = _tighter(left, leaf.left), _tighter(right, leaf.right)
    elif isinstance(leaf, Segments) and segs is None and segment_ids is None:
      segs = leaf
    else:
      return None
  if segs is not None:
    # Segments read ids at absolute positions, the call's segment_ids by row / column.
    if not (_is_static_int(q_offset) and _is_static_int(kv_offset)
            and (q_offset, kv_offset) == (0, 0)):
      return None
    q_ids, kv_ids = segs.q_ids, segs.kv_ids
    if (q_ids.ndim != 2 or kv_ids.ndim != 2 or q_ids.shape[1] != q_len
        or kv_ids.shape[1] != kv_len or q_ids.shape[0] not in (1, batch)
        or kv_ids.shape[0] not in (1, batch)):
      return None
    segment_ids = (jnp.broadcast_to(q_ids, (batch, q_len)),
                   jnp.broadcast_to(kv_ids, (batch, kv_len)))
  return dict(mask=None, is_causal=causal,
              sliding_window=(left, right) if windowed and (left, right) != (None, None)
              else None,
              segment_ids=segment_ids, q_offset=q_offset, kv_offset=kv_offset)
