"""Pure-jnp reference for the paged attention kernel contract (`paged_attention.py`).

Contract (shared with `pallas_kernels.paged_attention.paged_attention`):

    q           [B, T, N, H]            T new queries per sequence (T = 1: decode)
    k_pages     [P, ps, K, H]           or [L, P, ps, K, H] with `layer=`
    v_pages     [P, ps, K, Hv]          or [L, P, ps, K, Hv]
    page_table  int32 [B, M]            pages of row b's sequence in order (-1: none)
    lengths     int32 [B]               keys of row b sit at positions 0 .. lengths[b]-1
    q_offset    int32 [B]               query t of row b sits at position q_offset[b] + t

Key at position p of row b is `k_pages[page_table[b, p // ps], p % ps]`. Query head h reads
KV head h // (N // K). Kept pairs: `p < lengths[b]`, `p <= q_pos` if causal,
`q_pos - left <= p <= q_pos + right` for a sliding window `(left, right)` (None = unbounded).
Scores `scale * <q, k>` (scale defaults to 1/sqrt(H)), then `softcap * tanh(s / softcap)`;
`sinks [N]` join the softmax denominator. A row with no kept key gives zeros and
`lse = -inf` (or `sinks[h]`). Returns `out [B, T, N, Hv]` in q's dtype, and
`lse [B, N, T]` float32 with `return_lse=True`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def gather_pages(pages, page_table, *, layer=None):
  """Dense `[B, M * ps, K, D]` view of the pages listed in `page_table [B, M]`."""
  if layer is not None:
    pages = pages[layer]
  elif pages.ndim == 5:
    raise ValueError("stacked pages [L, P, ps, K, D] need layer=")
  B, M = page_table.shape
  x = pages[jnp.maximum(page_table, 0)]                   # [B, M, ps, K, D]
  return x.reshape(B, M * pages.shape[1], *pages.shape[2:])


def paged_attention_reference(q, k_pages, v_pages, page_table, lengths, q_offset, *,
                              layer=None, scale=None, softcap=None, sinks=None,
                              sliding_window=None, is_causal=True, return_lse=False):
  """See the module docstring. float32 math, materializes `[B, N, T, M * ps]` scores."""
  B, T, N, H = q.shape
  k = gather_pages(k_pages, page_table, layer=layer).astype(jnp.float32)
  v = gather_pages(v_pages, page_table, layer=layer).astype(jnp.float32)
  S, K = k.shape[1], k.shape[2]
  G = N // K
  scale = 1.0 / math.sqrt(H) if scale is None else scale
  hp = jax.lax.Precision.HIGHEST

  qf = q.astype(jnp.float32).reshape(B, T, K, G, H)
  s = jnp.einsum("btkgh,bskh->bkgts", qf, k, precision=hp).reshape(B, N, T, S) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)

  q_pos = jnp.asarray(q_offset, jnp.int32).reshape(B, 1)[:, :, None] + jnp.arange(T)[None, :, None]
  kv_pos = jnp.arange(S, dtype=jnp.int32)[None, None, :]
  keep = kv_pos < jnp.asarray(lengths, jnp.int32)[:, None, None]          # [B, T, S]
  if is_causal:
    keep &= kv_pos <= q_pos
  if sliding_window is not None:
    left, right = sliding_window
    if left is not None:
      keep &= kv_pos >= q_pos - left
    if right is not None:
      keep &= kv_pos <= q_pos + right
  s = jnp.where(keep[:, None], s, -jnp.inf)

  m = jnp.max(s, axis=-1, keepdims=True)
  if sinks is not None:
    sink = sinks.astype(jnp.float32)[None, :, None, None]
    m = jnp.maximum(m, sink)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.exp(s - m)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  if sinks is not None:
    denom = denom + jnp.exp(sink - m)
  safe = jnp.where(denom > 0, denom, 1.0)
  p = (e / safe).reshape(B, K, G, T, S)
  out = jnp.einsum("bkgts,bskh->btkgh", p, v, precision=hp)
  out = out.reshape(B, T, N, v.shape[-1]).astype(q.dtype)
  if not return_lse:
    return out
  lse = jnp.where(denom > 0, jnp.log(safe) + m, -jnp.inf)[..., 0]
  return out, lse.astype(jnp.float32)
