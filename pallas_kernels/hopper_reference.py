"""Pure-jnp reference of `pallas_kernels.hopper_attention.hopper_attention`.

Same arguments and semantics (causal with static offsets, sliding window (left, right), segment
ids (a [B, T] array with T == S, or a (q_ids [B, T], kv_ids [B, S]) pair), GQA,
`return_lse` natural-log [B, N, T] float32; fully masked rows give out = 0, lse = -inf and zero
gradients; `mask`: an extra dense bool [B|1, N|1, T, S] keep mask, e.g. a block_sparsity call's
mask_fn evaluated on every position), materialising the [B, N, T, S] scores in float32. Differentiable with JAX autodiff
(including through lse). Meant for tests and small problems; kernel-only options are ignored.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["hopper_attention_reference", "keep_mask"]


def keep_mask(T: int, S: int, *, is_causal=False, q_offset=0, kv_offset=0,
              sliding_window=None):
  """bool [T, S]: which (query, key) pairs take part (absolute positions)."""
  q_pos = q_offset + jnp.arange(T, dtype=jnp.int32)[:, None]
  kv_pos = kv_offset + jnp.arange(S, dtype=jnp.int32)[None, :]
  keep = jnp.ones((T, S), bool)
  if is_causal:
    keep = keep & (kv_pos <= q_pos)
  if sliding_window is not None:
    if isinstance(sliding_window, int):
      sliding_window = (sliding_window, sliding_window)
    left, right = sliding_window
    if left is not None:
      keep = keep & (kv_pos >= q_pos - left)
    if right is not None:
      keep = keep & (kv_pos <= q_pos + right)
  return keep


def hopper_attention_reference(q, k, v, *, scale=None, is_causal=False, q_offset=0,
                               kv_offset=0, sliding_window=None, segment_ids=None,
                               return_lse=False, mask=None, **unused_kernel_options):
  del unused_kernel_options
  B, T, N, D = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  if scale is None:
    scale = 1.0 / math.sqrt(D)
  hp = lax.Precision.HIGHEST
  qf = q.astype(jnp.float32).reshape(B, T, K, G, D)
  s = jnp.einsum("btkgd,bskd->bkgts", qf, k.astype(jnp.float32), precision=hp)
  s = s.reshape(B, N, T, S) * scale
  keep = keep_mask(T, S, is_causal=is_causal, q_offset=q_offset, kv_offset=kv_offset,
                   sliding_window=sliding_window)
  if segment_ids is not None:
    q_ids, kv_ids = (segment_ids if isinstance(segment_ids, (tuple, list))
                     else (segment_ids, segment_ids))
    keep = keep & (q_ids[:, None, :, None] == kv_ids[:, None, None, :])   # [B, 1, T, S]
  if mask is not None:
    keep = keep & jnp.asarray(mask, bool)
  m = jnp.max(jnp.where(keep, s, -jnp.inf), axis=-1, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  e = jnp.where(keep, jnp.exp(jnp.where(keep, s, 0.0) - m), 0.0)
  l = jnp.sum(e, axis=-1, keepdims=True)
  empty = l == 0.0
  l_safe = jnp.where(empty, 1.0, l)
  p = (e / l_safe).reshape(B, K, G, T, S)
  out = jnp.einsum("bkgts,bskd->btkgd", p, v.astype(jnp.float32), precision=hp)
  out = out.reshape(B, T, N, v.shape[-1]).astype(q.dtype)
  if not return_lse:
    return out
  lse = jnp.where(empty, -jnp.inf, jnp.log(l_safe) + m)[..., 0]
  return out, lse
