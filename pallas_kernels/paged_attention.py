"""Paged attention in Pallas (Triton lowering): decode and chunked prefill over a page table.

The contract (shapes, positions, masking, sinks, lse) is the one documented in
`pallas_kernels/paged_reference.py`, whose `paged_attention_reference` is the jnp oracle.

Kernel layout. Grid `(B, K, q_blocks, splits)`: one program per (sequence, KV head, block of
query rows, KV split). The `T * G` queries of one KV head (`G = N // K` grouped heads, times
`T` new tokens) are packed as the rows of one matrix (row `r` = token `r // G`, head `r % G`)
so a decode step (T = 1) shares each K/V tile across the whole GQA group. The tensor cores
need 16 rows: when `T * G` is a smaller power of 2 the kernel replicates the rows in
registers and folds the copies back before storing ("replicated rows"), so no padded copy
of q and no slice of the output surround the kernel; otherwise q is zero-padded to whole
blocks. Each program walks its share of the sequence's pages through the page table,
`pages_per_block` pages per step, with an online softmax (base 2), and writes its partial
output with its log-sum-exp; the splits are combined afterwards through the lse (as in
flash-decoding), and the attention sinks join the denominator there. Blocks entirely outside
`[window start, min(length, last query position + 1))` are never read.

Measured on H100 (jax 0.11.2, bf16, B=32, context 4096, 32/8 heads, D=128, pages of 64 in
random order): 205.9 us = 2.61 TB/s of K+V read (JAX's Pallas paged kernel 1.69 TB/s,
dense XLA decode 0.90 TB/s, an XLA elementwise copy 2.65 TB/s). See benchmarks/bench_paged.py.

Pages are read straight from the cache layout `[L, P, page_size, K, H]` (a cache without a
layer axis is viewed as L = 1): the layer is a runtime index, so a stacked cache is never
sliced (sliced copies would double the memory traffic).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # Triton-specific API; absent in CPU-only builds of some versions.
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
  plgpu = None

__all__ = ["paged_attention", "default_config", "supports"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_NEG = -1e30            # finite "minus infinity" for the running max (keeps exp2 NaN-free)
_H100_SMS = 132


def _next_pow2(x: int) -> int:
  return 1 << max(0, (int(x) - 1).bit_length())


def _is_pow2(x: int) -> bool:
  return x > 0 and (x & (x - 1)) == 0


def default_config(*, batch, q_len, num_heads, num_kv_heads, head_dim, page_size, max_pages,
                   num_sms: int = _H100_SMS):
  """Tile sizes for a call; every field can be overridden by keyword."""
  G = num_heads // num_kv_heads
  rows = q_len * G
  block_q = min(64, max(16, _next_pow2(rows)))
  q_blocks = -(-rows // block_q)
  # One page per step from 32 tokens up (a vector gather of several pages per step measured
  # slower on H100: ps=64: 1 page 2.61 TB/s vs 2 pages 2.01; ps=32: 2.22 vs 1.94); smaller
  # pages are gathered to 64 keys per step (ps=16: 4 pages 1.99 TB/s vs 1 page 1.66).
  pages_per_block = 1 if page_size >= 32 else max(1, 64 // page_size)
  n_blocks = -(-max_pages // pages_per_block)
  programs = batch * num_kv_heads * q_blocks
  # Split the KV only when there are fewer programs than SMs (H100, B=32, K=8 decode: 256
  # programs, 1 split measured best: 2.51 TB/s vs 2.47 with 2 and 2.38 with 4).
  num_splits = max(1, min(n_blocks, -(-num_sms // programs)))
  num_warps = 4
  num_stages = 3
  return dict(block_q=block_q, pages_per_block=pages_per_block, num_splits=num_splits,
              num_warps=num_warps, num_stages=num_stages)


def supports(*, head_dim, v_head_dim, page_size, pages_per_block=None) -> str | None:
  """Why the compiled (Triton) kernel cannot run this shape, or None. Interpret mode runs
  any shape."""
  for name, d in (("head_dim", head_dim), ("value head_dim", v_head_dim),
                  ("page_size", page_size)):
    if not _is_pow2(d):
      return f"{name}={d} must be a power of 2 for the Triton kernel"
  if head_dim < 16 or v_head_dim < 16:
    return "head dims must be >= 16 for the Triton kernel"
  if page_size * (pages_per_block or (1 if page_size >= 32 else 64 // page_size)) < 16:
    return "pages_per_block * page_size must be >= 16"
  return None


def _kernel(layer_ref, lengths_ref, qoff_ref, table_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
            *, q_len, group, block_q, real_rows, page_size, pages_per_block, blocks_per_split,
            scale, softcap, is_causal, window, default_offset):
  b = pl.program_id(0)
  qb = pl.program_id(2)
  split = pl.program_id(3)
  block_k = page_size * pages_per_block

  layer = layer_ref[0]
  length = lengths_ref[b]
  q_off = length - q_len if default_offset else qoff_ref[b]

  # Positions of this block's query rows (row r = token r // G, head r % G). With replicated
  # rows (real_rows < block_q) row r is a copy of row r % real_rows.
  first_row = qb * block_q
  rows = first_row + jnp.arange(block_q, dtype=jnp.int32)
  if real_rows < block_q:
    rows = rows % real_rows
  q_pos = q_off + rows // group                                      # [bq]
  q_lo = q_off + first_row // group
  q_hi = q_off + jnp.minimum((first_row + block_q - 1) // group, q_len - 1)

  # Key range any row of this block can see, then this split's share of it in blocks.
  kv_hi = length
  if is_causal:
    kv_hi = jnp.minimum(kv_hi, q_hi + 1)
  left, right = window if window is not None else (None, None)
  if right is not None:
    kv_hi = jnp.minimum(kv_hi, q_hi + right + 1)
  kv_hi = jnp.maximum(kv_hi, 0)
  kv_lo = jnp.int32(0)
  if left is not None:
    kv_lo = jnp.maximum(q_lo - left, 0)
  blk_lo = jnp.maximum(split * blocks_per_split, kv_lo // block_k)
  blk_hi = jnp.minimum((split + 1) * blocks_per_split, (kv_hi + block_k - 1) // block_k)

  q = q_ref[...]                                                     # [bq | real_rows, H]
  if real_rows < block_q:
    q = jnp.broadcast_to(q[None], (block_q // real_rows,) + q.shape).reshape(block_q, q.shape[-1])
  if softcap is None:
    qk_scale = scale * LOG2E
  else:
    qk_scale = scale / softcap

  def body(blk, carry):
    acc, m, l = carry
    first_page = blk * pages_per_block
    if pages_per_block == 1:
      page = jnp.maximum(table_ref[first_page], 0)
      k = k_ref[layer, page]                                         # [ps, H]
      v = v_ref[layer, page]
    else:
      pages = jnp.maximum(table_ref[pl.ds(first_page, pages_per_block)], 0)
      k = k_ref[layer, pages].reshape(block_k, k_ref.shape[-1])
      v = v_ref[layer, pages].reshape(block_k, v_ref.shape[-1])
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32) * qk_scale
    if softcap is not None:
      s = jnp.tanh(s) * (softcap * LOG2E)                            # log2 domain
    kv_pos = blk * block_k + jnp.arange(block_k, dtype=jnp.int32)
    keep = kv_pos[None, :] < length
    if is_causal:
      keep &= kv_pos[None, :] <= q_pos[:, None]
    if left is not None:
      keep &= kv_pos[None, :] >= q_pos[:, None] - left
    if right is not None:
      keep &= kv_pos[None, :] <= q_pos[:, None] + right
    s = jnp.where(keep, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = l * alpha + p.sum(axis=1)
    acc = acc * alpha[:, None] + jax.lax.dot_general(
        p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return acc, m_new, l

  acc = jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32)
  m = jnp.full((block_q,), _NEG, jnp.float32)
  l = jnp.zeros((block_q,), jnp.float32)
  acc, m, l = jax.lax.fori_loop(blk_lo, blk_hi, body, (acc, m, l))

  nonempty = l > 0
  safe_l = jnp.where(nonempty, l, 1.0)
  o = acc / safe_l[:, None]
  lse = jnp.where(nonempty, m * LN2 + jnp.log(safe_l), -jnp.inf)
  if real_rows < block_q:   # the copies hold identical values: fold them back
    o = o.reshape(block_q // real_rows, real_rows, o.shape[-1]).max(axis=0)
    lse = lse.reshape(block_q // real_rows, real_rows).max(axis=0)
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse


def _compiler_params(num_warps, num_stages):
  if plgpu is None:
    return None
  cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
  return cls(num_warps=num_warps, num_stages=num_stages)


@functools.partial(
    jax.jit,
    static_argnames=("scale", "softcap", "sliding_window", "is_causal", "return_lse",
                     "block_q", "pages_per_block", "num_splits", "num_warps", "num_stages",
                     "replicate_rows", "interpret"))
def paged_attention(q, k_pages, v_pages, page_table, lengths, q_offset, sinks=None, *,
                    layer=None, scale=None, softcap=None, sliding_window=None,
                    is_causal=True, return_lse=False, block_q=None, pages_per_block=None,
                    num_splits=None, num_warps=None, num_stages=None, replicate_rows=True,
                    interpret=False):
  """Paged attention (decode when T = 1, chunked prefill when T > 1); contract in
  `paged_reference.py`. `q_offset=None` means `lengths - T` (computed in the kernel).
  `layer` (int or int32 scalar) picks the layer of stacked pages `[L, P, ps, K, H]`.
  `sliding_window` is a normalized `(left, right)` tuple or None. Tile parameters default to
  `default_config(...)`; `replicate_rows=False` zero-pads small row counts instead."""
  B, T, N, H = q.shape
  if k_pages.ndim == 4:
    if layer is not None:
      raise ValueError("layer= given for pages without a layer axis")
    k_pages, v_pages = k_pages[None], v_pages[None]
    layer = 0
  elif layer is None:
    raise ValueError("stacked pages [L, P, ps, K, H] need layer=")
  L, P, ps, K, Hk = k_pages.shape
  Hv = v_pages.shape[-1]
  if Hk != H or N % K:
    raise ValueError(f"query {q.shape} does not match pages {k_pages.shape}")
  M = page_table.shape[1]
  G = N // K
  cfg = default_config(batch=B, q_len=T, num_heads=N, num_kv_heads=K, head_dim=H,
                       page_size=ps, max_pages=M)
  block_q = block_q or cfg["block_q"]
  ppb = pages_per_block or cfg["pages_per_block"]
  num_splits = num_splits or cfg["num_splits"]
  num_warps = num_warps or cfg["num_warps"]
  num_stages = num_stages or cfg["num_stages"]
  if not interpret:
    reason = supports(head_dim=H, v_head_dim=Hv, page_size=ps, pages_per_block=ppb)
    if reason:
      raise NotImplementedError(f"paged_attention kernel: {reason}")
  scale = 1.0 / math.sqrt(H) if scale is None else float(scale)

  rows = T * G
  q_blocks = -(-rows // block_q)
  rows_pad = q_blocks * block_q
  real_rows = block_q
  if replicate_rows and rows < block_q and block_q % rows == 0:
    rows_pad = real_rows = rows
  n_blocks = -(-M // ppb)
  num_splits = max(1, min(num_splits, n_blocks))
  blocks_per_split = -(-n_blocks // num_splits)
  m_pad = num_splits * blocks_per_split * ppb

  # Rows of one KV head: [B, T, K, G, H] -> [B, K, T*G, H], padded to whole query blocks.
  qr = q.reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4).reshape(B, K, rows, H)
  if rows_pad > rows:
    qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_pad - rows), (0, 0)))
  table = page_table.astype(jnp.int32)
  if m_pad > M:
    table = jnp.pad(table, ((0, 0), (0, m_pad - M)))
  lengths = jnp.asarray(lengths, jnp.int32).reshape(B)
  default_offset = q_offset is None
  q_offset = lengths if default_offset else jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32),
                                                             (B,))
  layer_arr = jnp.asarray(layer, jnp.int32).reshape(1)

  fused_out = num_splits == 1 and sinks is None
  o_dtype = q.dtype if fused_out else jnp.float32
  kernel = functools.partial(
      _kernel, q_len=T, group=G, block_q=block_q, real_rows=real_rows, page_size=ps,
      pages_per_block=ppb, blocks_per_split=blocks_per_split, scale=scale, softcap=softcap,
      is_causal=is_causal, window=sliding_window, default_offset=default_offset)
  full = lambda shape: pl.BlockSpec(shape, lambda b, h, i, s: (0,) * len(shape))
  o, lse = pl.pallas_call(
      kernel,
      grid=(B, K, q_blocks, num_splits),
      in_specs=[
          full((1,)),                                                   # layer
          full((B,)),                                                   # lengths
          full((B,)),                                                   # q_offset
          pl.BlockSpec((None, m_pad), lambda b, h, i, s: (b, 0)),       # page table row
          pl.BlockSpec((None, None, real_rows, H), lambda b, h, i, s: (b, h, i, 0)),
          pl.BlockSpec((L, P, ps, None, H), lambda b, h, i, s: (0, 0, 0, h, 0)),
          pl.BlockSpec((L, P, ps, None, Hv), lambda b, h, i, s: (0, 0, 0, h, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, None, None, real_rows, Hv), lambda b, h, i, s: (s, b, h, i, 0)),
          pl.BlockSpec((None, None, None, real_rows), lambda b, h, i, s: (s, b, h, i)),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((num_splits, B, K, rows_pad, Hv), o_dtype),
          jax.ShapeDtypeStruct((num_splits, B, K, rows_pad), jnp.float32),
      ],
      compiler_params=None if interpret else _compiler_params(num_warps, num_stages),
      interpret=interpret,
      name=f"jattn_paged_attention_bq{block_q}_ppb{ppb}_s{num_splits}",
  )(layer_arr, lengths, q_offset, table, qr, k_pages, v_pages)

  if num_splits == 1:
    o, lse = o[0], lse[0]
  else:  # combine the splits through their log-sum-exp
    m = lse.max(axis=0)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m_safe)                                           # 0 for empty splits
    denom = w.sum(axis=0)
    o = (o * w[..., None]).sum(axis=0) / jnp.where(denom > 0, denom, 1.0)[..., None]
    lse = jnp.where(denom > 0, m_safe + jnp.log(jnp.where(denom > 0, denom, 1.0)), -jnp.inf)
  if sinks is not None:
    r = jnp.arange(rows_pad) % G
    sink = sinks.astype(jnp.float32).reshape(K, G)[:, r][None]           # [1, K, rows_pad]
    lse_all = jnp.logaddexp(lse, sink)
    o = o * jnp.exp(lse - lse_all)[..., None]
    lse = lse_all

  out = o[:, :, :rows].reshape(B, K, T, G, Hv).transpose(0, 2, 1, 3, 4).reshape(B, T, N, Hv)
  out = out.astype(q.dtype)
  if not return_lse:
    return out
  lse = lse[:, :, :rows].reshape(B, K, T, G).transpose(0, 1, 3, 2).reshape(B, N, T)
  return out, lse
