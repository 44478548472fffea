"""Pure-jnp reference of `pallas_kernels.flash_attention.flash_attention`.

Exactly the same contract (arguments, block-sparsity semantics: `mask_fn` is
only evaluated on partial blocks, full blocks keep every pair, unlisted blocks
keep none; columns beyond the kv length are never kept), materialising the
[B, N, T, S] scores with float32 accumulation.  Differentiable with plain JAX
autodiff (finite, zero gradients on fully-masked rows).  Meant for tests and
small problems.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.block_sparsity import BlockSparsity

__all__ = ["flash_attention_reference", "block_keep"]


def _expand_blocks(num, idx, n_target):
  """Block lists -> bool [Bm, Hm, rows, n_target]."""
  num = jnp.asarray(num, jnp.int32)
  idx = jnp.asarray(idx, jnp.int32)
  valid = jnp.arange(idx.shape[-1]) < num[..., None]
  onehot = jax.nn.one_hot(idx, n_target, dtype=jnp.int32)  # [...,m,n_target]
  return jnp.sum(onehot * valid[..., None].astype(jnp.int32), axis=-2) > 0


def block_keep(block_sparsity: BlockSparsity | None, block_q: int,
               block_kv: int, T: int, S: int):
  """(full, partial) element masks [Bm, Hm, T, S] of a block sparsity."""
  if block_sparsity is None:
    full = jnp.ones((1, 1, T, S), bool)
    return full, jnp.zeros_like(full)
  bs = block_sparsity
  nq, nkv = bs.kv_num_blocks.shape[-1], bs.q_num_blocks.shape[-1]
  fb = _expand_blocks(bs.full_kv_num_blocks, bs.full_kv_indices, nkv)
  pb = _expand_blocks(bs.kv_num_blocks, bs.kv_indices, nkv)

  def up(x):
    x = jnp.repeat(jnp.repeat(x, block_q, axis=-2), block_kv, axis=-1)
    return x[..., :T, :S]
  return up(fb), up(pb)


def flash_attention_reference(q, k, v, *,
                              block_sparsity: BlockSparsity | None = None,
                              block_q: int | None = None,
                              block_kv: int | None = None,
                              mask_fn: Callable | None = None,
                              q_side: tuple = (),
                              kv_side: tuple = (),
                              q_offset: Any = 0,
                              kv_offset: Any = 0,
                              scale: float | None = None,
                              softcap: float | None = None,
                              sinks=None,
                              score_mod: Callable | None = None,
                              return_lse: bool = False,
                              **unused_kernel_options):
  """Same contract as `flash_attention`; kernel-only options are ignored."""
  del unused_kernel_options
  B, T, N, D = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  if block_sparsity is None and mask_fn is not None:
    raise ValueError("mask_fn given with block_sparsity=None")
  if scale is None:
    scale = 1.0 / math.sqrt(D)
  hp = lax.Precision.HIGHEST
  qf = q.astype(jnp.float32)
  kf = jnp.repeat(k.astype(jnp.float32), G, axis=2)
  vf = jnp.repeat(v.astype(jnp.float32), G, axis=2)
  s = jnp.einsum("btnd,bsnd->bnts", qf, kf, precision=hp) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)

  bi = jnp.arange(B, dtype=jnp.int32)[:, None, None, None]
  hi = jnp.arange(N, dtype=jnp.int32)[None, :, None, None]
  q_pos = (jnp.asarray(q_offset, jnp.int32)
           + jnp.arange(T, dtype=jnp.int32))[None, None, :, None]
  kv_pos = (jnp.asarray(kv_offset, jnp.int32)
            + jnp.arange(S, dtype=jnp.int32))[None, None, None, :]
  if score_mod is not None:
    s = jnp.broadcast_to(score_mod(s, bi, hi, q_pos, kv_pos), s.shape)
    s = s.astype(jnp.float32)

  if block_sparsity is not None:
    if block_q is None or block_kv is None:
      raise ValueError("block_q and block_kv are required with block_sparsity")
    full, partial = block_keep(block_sparsity, int(block_q), int(block_kv),
                               T, S)
    if mask_fn is not None:
      q_vals = tuple(jnp.asarray(a, jnp.int32)[:, None, :, None]
                     for a in q_side)
      kv_vals = tuple(jnp.asarray(a, jnp.int32)[:, None, None, :]
                      for a in kv_side)
      m = jnp.broadcast_to(mask_fn(bi, hi, q_pos, kv_pos, q_vals, kv_vals),
                           (B, N, T, S))
      keep = full | (partial & m)
    else:
      keep = full | partial
    keep = jnp.broadcast_to(keep, (B, N, T, S))
  else:
    keep = jnp.ones((B, N, T, S), bool)

  s_safe = jnp.where(keep, s, 0.0)
  m = jnp.max(jnp.where(keep, s, -jnp.inf), axis=-1)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  if sinks is not None:
    sk = jnp.asarray(sinks).astype(jnp.float32)[None, :, None]
    m = jnp.maximum(m, sk)
  m = lax.stop_gradient(m)
  p = jnp.where(keep, jnp.exp(s_safe - m[..., None]), 0.0)
  l = jnp.sum(p, axis=-1)
  if sinks is not None:
    l = l + jnp.exp(sk - m)
  empty = l == 0.0
  l_safe = jnp.where(empty, 1.0, l)
  out = jnp.einsum("bnts,bsnd->btnd", p / l_safe[..., None], vf, precision=hp)
  lse = jnp.where(empty, -jnp.inf, m + jnp.log(l_safe))
  out = out.astype(q.dtype)
  if return_lse:
    return out, lse
  return out
