"""Folding an attention call's masking arguments into one `MaskMod`."""

from __future__ import annotations

from jattn.masks._block_mask import BlockMask
from jattn.masks._mods import (and_masks, as_mask_mod, causal, local_window,
                               offset, segments)


def combine_constraints(mask=None, *, is_causal: bool = False,
                        segment_ids=None, sliding_window=None, q_offset=0,
                        kv_offset=0):
  """One mask for every constraint of a ``jattn.attention`` call, for
  backends of ``mask_form="mask_mod"`` (positions absolute).

  Args:
    mask: None, a `MaskMod` / plain mask function, or a `BlockMask`.
    is_causal: adds `causal`.
    segment_ids: ``[B, T]`` or a ``(q [B, T], kv [B, S])`` pair, indexed by
      *row* (query row ``i`` is at position ``q_offset + i``), as the call
      takes them; shifted here to absolute positions.
    sliding_window: None, an int ``w`` (= ``(w, w)``) or ``(left, right)``
      with None for an open side: ``q - left <= kv <= q + right``.
    q_offset, kv_offset: the call's offsets (ints or int32 scalars).

  Returns None when nothing masks; the `BlockMask` itself when it is the only
  constraint; otherwise a `MaskMod` (a `BlockMask` contributes its
  ``mask_mod``, whose block structure the backend must then rebuild).
  Dense bool arrays cannot be folded into a `MaskMod` (TypeError).
  """
  parts = []
  if isinstance(mask, BlockMask):
    if not (is_causal or segment_ids is not None or sliding_window is not None):
      return mask
    if mask.mask_mod is None:
      raise TypeError("a BlockMask without mask_mod cannot be combined with "
                      "other constraints")
    parts.append(mask.mask_mod)
  elif mask is not None:
    if not callable(mask) or hasattr(mask, "dtype"):
      raise TypeError(
          "mask must be a MaskMod, a mask function (b, h, q_idx, kv_idx) -> "
          f"bool or a BlockMask to fold into a MaskMod, got "
          f"{type(mask).__name__}; dense bool masks need a 'dense' backend")
    parts.append(as_mask_mod(mask))
  if is_causal:
    parts.append(causal())
  if sliding_window is not None:
    if isinstance(sliding_window, (tuple, list)):
      left, right = sliding_window
    else:
      left = right = sliding_window
    if left is not None or right is not None:
      parts.append(local_window(left, right))
  if segment_ids is not None:
    # Row-indexed ids: absolute position p reads row p - offset.
    parts.append(offset(segments(segment_ids), -q_offset, -kv_offset))
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else and_masks(*parts)
