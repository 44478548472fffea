"""Variable-length (packed) attention, FlashAttention's varlen API on top of `jattn.attention`.

Sequences are packed along one token axis: `q [total_q, N, H]`, `k [total_k, K, H]`, with
`cu_seqlens_q = [0, len_0, len_0 + len_1, ...]`. Packing becomes a segment mask, so a
block-sparse backend (`pallas_flash`) skips every block pair that straddles two sequences:
no FLOPs are spent on padding or across sequences.

Also here: conversions between cu_seqlens, segment ids, position ids and padded batches.
Anything whose size depends on data (the number of sequences) takes a static bound.
"""

from __future__ import annotations

import jax.numpy as jnp

from jattn import masks
from jattn.attention import attention

# Tokens past cu_seqlens[-1] (tail padding of a packed buffer) get these ids, which never
# match a real sequence nor each other across q / kv, so they attend to nothing.
_Q_TAIL, _KV_TAIL = -1, -2


def _check_cu(name: str, cu):
  cu = jnp.asarray(cu)
  if cu.ndim != 1 or cu.shape[0] < 2:
    raise ValueError(f"{name} must be 1-D [num_seqs + 1] starting at 0, got shape {cu.shape}")
  if not jnp.issubdtype(cu.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {cu.dtype.name}")
  return cu.astype(jnp.int32)


def cu_seqlens_to_segment_ids(cu_seqlens, total: int, *, tail_id: int = _Q_TAIL):
  """`[total]` int32: the index of the sequence each token belongs to (`tail_id` past the end)."""
  cu = _check_cu("cu_seqlens", cu_seqlens)
  tok = jnp.arange(total, dtype=jnp.int32)
  seg = jnp.searchsorted(cu[1:], tok, side="right").astype(jnp.int32)
  return jnp.where(tok < cu[-1], seg, tail_id)


def cu_seqlens_to_position_ids(cu_seqlens, total: int):
  """`[total]` int32: position of each token inside its own sequence (0 past the end)."""
  cu = _check_cu("cu_seqlens", cu_seqlens)
  seg = cu_seqlens_to_segment_ids(cu, total)
  tok = jnp.arange(total, dtype=jnp.int32)
  return jnp.where(seg >= 0, tok - cu[jnp.maximum(seg, 0)], 0)


def segment_ids_to_cu_seqlens(segment_ids, max_seqs: int):
  """cu_seqlens `[max_seqs + 1]` from contiguous 1-D segment ids (a new id starts a sequence).

  Unused trailing entries repeat the total, i.e. describe empty sequences.
  """
  seg = jnp.asarray(segment_ids)
  if seg.ndim != 1:
    raise ValueError(f"segment_ids must be 1-D [total], got shape {seg.shape}")
  starts = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
  return _cu_from_starts(starts, max_seqs)


def position_ids_to_cu_seqlens(position_ids, max_seqs: int):
  """cu_seqlens `[max_seqs + 1]` from 1-D position ids: a sequence starts wherever the position
  does not continue the previous one (transformers' `find_packed_sequence_indices` rule)."""
  pos = jnp.asarray(position_ids)
  if pos.ndim != 1:
    raise ValueError(f"position_ids must be 1-D [total], got shape {pos.shape}")
  starts = jnp.concatenate([jnp.ones((1,), bool), pos[1:] != pos[:-1] + 1])
  return _cu_from_starts(starts, max_seqs)


def _cu_from_starts(starts, max_seqs: int):
  total = starts.shape[0]
  idx = jnp.nonzero(starts, size=max_seqs, fill_value=total)[0].astype(jnp.int32)
  return jnp.concatenate([idx, jnp.full((1,), total, jnp.int32)])


def pad(packed, cu_seqlens, batch: int, max_len: int):
  """Packed `[total, ...]` -> (`[batch, max_len, ...]` zero-padded on the right, bool mask
  `[batch, max_len]`)."""
  cu = _check_cu("cu_seqlens", cu_seqlens)
  if cu.shape[0] != batch + 1:
    raise ValueError(f"cu_seqlens must have batch + 1 = {batch + 1} entries, got {cu.shape[0]}")
  lengths = cu[1:] - cu[:-1]
  col = jnp.arange(max_len, dtype=jnp.int32)
  valid = col[None, :] < lengths[:, None]
  src = jnp.clip(cu[:-1, None] + col[None, :], 0, packed.shape[0] - 1)
  out = jnp.where(valid.reshape(valid.shape + (1,) * (packed.ndim - 1)), packed[src], 0)
  return out.astype(packed.dtype), valid


def unpad(padded, attention_mask, total: int):
  """Right-padded `[B, L, ...]` + bool/int mask `[B, L]` -> (packed `[total, ...]`,
  cu_seqlens `[B + 1]`). `total` is a static bound; slots past the real tokens are zeros."""
  am = jnp.asarray(attention_mask).astype(bool)
  if am.shape != padded.shape[:2]:
    raise ValueError(f"attention_mask must have shape {padded.shape[:2]}, got {am.shape}")
  lengths = jnp.sum(am, axis=1).astype(jnp.int32)
  cu = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(lengths).astype(jnp.int32)])
  flat = padded.reshape((-1,) + padded.shape[2:])
  idx = jnp.nonzero(am.reshape(-1), size=total, fill_value=0)[0]
  tok = jnp.arange(total)
  keep = (tok < cu[-1]).reshape((total,) + (1,) * (flat.ndim - 1))
  return jnp.where(keep, flat[idx], 0).astype(padded.dtype), cu


def varlen_mask(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int, *,
                is_causal: bool = False, sliding_window=None) -> masks.MaskMod:
  """The `MaskMod` of packed attention over `[1, total_q] x [1, total_k]` (absolute positions
  = packed token indices).

  Causal and windows are aligned bottom-right inside each sequence pair, as in FlashAttention's
  varlen API: the last query of sequence i sits at the position of its last key.
  """
  cu_q = _check_cu("cu_seqlens_q", cu_seqlens_q)
  cu_k = _check_cu("cu_seqlens_k", cu_seqlens_k)
  if cu_q.shape != cu_k.shape:
    raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, "
                     f"got {cu_q.shape[0] - 1} and {cu_k.shape[0] - 1}")
  q_seg = cu_seqlens_to_segment_ids(cu_q, total_q, tail_id=_Q_TAIL)
  kv_seg = cu_seqlens_to_segment_ids(cu_k, total_k, tail_id=_KV_TAIL)
  mask = masks.segments((q_seg[None], kv_seg[None]))
  if not is_causal and sliding_window is None:
    return mask
  len_q = cu_q[1:] - cu_q[:-1]
  len_k = cu_k[1:] - cu_k[:-1]
  sq = jnp.maximum(q_seg, 0)
  q_pos = cu_seqlens_to_position_ids(cu_q, total_q) + (len_k - len_q)[sq]
  kv_pos = cu_seqlens_to_position_ids(cu_k, total_k)
  parts = [mask]
  if is_causal:
    parts.append(masks.remap_positions(masks.causal(), (q_pos[None], kv_pos[None])))
  if sliding_window is not None:
    left, right = ((sliding_window, sliding_window) if isinstance(sliding_window, int)
                   else sliding_window)
    parts.append(masks.remap_positions(masks.local_window(left, right),
                                       (q_pos[None], kv_pos[None])))
  return masks.and_masks(*parts)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int | None = None,
                     max_seqlen_k: int | None = None, *, is_causal: bool = False,
                     sliding_window=None, return_lse: bool = False, **kwargs):
  """Attention over packed sequences (FlashAttention / PyTorch `varlen_attn` layout).

  Args:
    q: `[total_q, N, H]`; k: `[total_k, K, H]`; v: `[total_k, K, Hv]`.
    cu_seqlens_q, cu_seqlens_k: int32 `[num_seqs + 1]` cumulative lengths starting at 0.
    max_seqlen_q, max_seqlen_k: accepted for API compatibility; the kernels size themselves
      from the block mask, so they are only checked to be positive when given.
    is_causal, sliding_window: per sequence, aligned bottom-right (see `varlen_mask`).
    **kwargs: any other `jattn.attention` argument (scale, softcap, sinks, implementation...).

  Returns `[total_q, N, Hv]` (zeros for tokens past `cu_seqlens_q[-1]`), and with
  `return_lse=True` also `lse [N, total_q]`.
  """
  for name, x, rank in (("q", q, 3), ("k", k, 3), ("v", v, 3)):
    if x.ndim != rank:
      raise ValueError(f"{name} must be packed [total_tokens, heads, head_dim], got shape "
                       f"{x.shape}")
  for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
    if m is not None and isinstance(m, int) and m <= 0:
      raise ValueError(f"{name} must be > 0, got {m}")
  for bad in ("mask", "segment_ids", "q_offset", "kv_offset"):
    if bad in kwargs:
      raise TypeError(f"varlen_attention derives {bad} from cu_seqlens; do not pass it")
  mask = varlen_mask(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], is_causal=is_causal,
                     sliding_window=sliding_window)
  res = attention(q[None], k[None], v[None], mask=mask, return_lse=return_lse, **kwargs)
  if return_lse:
    out, lse = res
    return out[0], lse[0]
  return res[0]
