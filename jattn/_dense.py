"""Folding every masking constraint of a call into one dense bool mask `[B|1, N|1, T, S]`.

Backends that consume dense masks (`mask_form="dense"`: the reference and XLA / cuDNN paths)
get their mask from here. Axes that no constraint depends on stay of size 1, so a plain
causal mask costs `T x S`, not `B x N x T x S`.
"""

from __future__ import annotations

import jax.numpy as jnp

from jattn._call import normalize_segment_ids, normalize_window


def positions(q_len: int, kv_len: int, q_offset, kv_offset):
  """Absolute positions shaped for `[B, N, T, S]` broadcasting: ([1,1,T,1], [1,1,1,S])."""
  q_pos = (jnp.arange(q_len, dtype=jnp.int32) + jnp.asarray(q_offset, jnp.int32))
  kv_pos = (jnp.arange(kv_len, dtype=jnp.int32) + jnp.asarray(kv_offset, jnp.int32))
  return q_pos[None, None, :, None], kv_pos[None, None, None, :]


def evaluate_mask_fn(fn, batch: int, heads: int, q_len: int, kv_len: int, q_offset, kv_offset):
  """Evaluates `fn(b, h, q_idx, kv_idx)` on broadcasting index arrays -> bool [B|1,N|1,T,S]."""
  b = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
  h = jnp.arange(heads, dtype=jnp.int32)[None, :, None, None]
  q_pos, kv_pos = positions(q_len, kv_len, q_offset, kv_offset)
  out = jnp.asarray(fn(b, h, q_pos, kv_pos))
  if out.dtype != jnp.bool_:
    raise TypeError(f"mask function must return bool, got dtype {out.dtype.name}")
  if out.ndim > 4:
    raise ValueError(f"mask function returned rank {out.ndim}; expected <= 4 "
                     "(b, h, q_idx, kv_idx broadcasting)")
  out = out.reshape((1,) * (4 - out.ndim) + out.shape)
  # b and h have sizes batch / heads, so axes 0-1 are already 1 or full size.
  return jnp.broadcast_to(out, (out.shape[0], out.shape[1], q_len, kv_len))


def dense_mask(*, batch: int, heads: int, q_len: int, kv_len: int, mask=None,
               is_causal: bool = False, segment_ids=None, q_offset=0, kv_offset=0,
               sliding_window=None):
  """Every constraint of a call as one bool array, or None when nothing is masked."""
  from jattn._call import _is_block_mask
  parts = []
  q_pos, kv_pos = positions(q_len, kv_len, q_offset, kv_offset)
  if mask is not None:
    if _is_block_mask(mask):
      parts.append(mask.to_dense())
    elif callable(mask) and not hasattr(mask, "dtype"):
      parts.append(evaluate_mask_fn(mask, batch, heads, q_len, kv_len, q_offset, kv_offset))
    else:
      parts.append(jnp.asarray(mask, jnp.bool_))
  if is_causal:
    parts.append(kv_pos <= q_pos)
  window = normalize_window(sliding_window)
  if window is not None:
    left, right = window
    if left is not None:
      parts.append(kv_pos >= q_pos - left)
    if right is not None:
      parts.append(kv_pos <= q_pos + right)
  segs = normalize_segment_ids(segment_ids, batch, q_len, kv_len)
  if segs is not None:
    q_seg, kv_seg = segs
    parts.append(q_seg[:, None, :, None] == kv_seg[:, None, None, :])
  if not parts:
    return None
  out = parts[0]
  for p in parts[1:]:
    out = jnp.logical_and(out, p)
  shape = jnp.broadcast_shapes(*(p.shape for p in parts))
  shape = (shape[0], shape[1], q_len, kv_len)
  return jnp.broadcast_to(out, shape)
