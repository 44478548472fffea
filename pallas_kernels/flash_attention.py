"""Portable Pallas (Triton lowering) flash attention: forward + backward.

One kernel family, splash style: for each query tile the forward and dQ kernels
walk only the KV blocks listed by a `BlockSparsity` (first the *full* blocks,
with no mask at all, then the *partial* ones, where `mask_fn` and the kv-length
mask are evaluated); the dK/dV kernel walks the transposed lists, for every
query head of its GQA group, so K/V are never repeated in memory and dK/dV are
accumulated in registers (no atomics).  `block_sparsity=None` means every block
is full (dense attention); only the padding tail is masked.

Backward modes (`KernelConfig.bwd` / `backward=`): "split" (default) runs the
dK/dV kernel and a separate dQ kernel (7 matmuls per visited block pair);
"fused" lets the dK/dV kernel also add each pair's dQ part into a float32
buffer with atomic adds (5 matmuls; dQ not bitwise deterministic).

Tile configuration: `default_config(head_dim, dtype, kv_len)` picks per call
shape (short / long KV extent, see SHORT_KV_EXTENT); callers override it with
`config=` and the per-pass tile / launch arguments.

Entry point: `flash_attention(q, k, v, *, ...)`; see its docstring and
docs/ARCHITECTURE.md ("Score pipeline") for the semantics.  The pure-jnp
`pallas_kernels.flash_reference.flash_attention_reference` has the same contract.

Layout: q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv]; query head h reads kv head
h // (N // K).

Tiles: the kernels may work on tiles smaller than the block-sparsity blocks
(each tile size must divide the block size): a tile of a full block is full, a
tile of a partial block is treated as partial.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.block_sparsity import BlockSparsity

__all__ = ["flash_attention", "default_config", "KernelConfig"]


# --------------------------------------------------------------------------
# Version shim (jax 0.10.x / 0.11.x): the only place that touches APIs whose
# names moved between releases.
# --------------------------------------------------------------------------
def _triton_compiler_params(num_warps: int, num_stages: int):
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  cls = getattr(plgpu, "CompilerParams", None) or getattr(
      plgpu, "TritonCompilerParams")
  return cls(num_warps=num_warps, num_stages=num_stages)


def _atomic_add(ref, idx, val):
  """ref[idx] += val, atomically (Triton: tt.atomic_rmw fadd; interpret
  mode: a read-modify-write of the discharged array)."""
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  fn = getattr(plgpu, "atomic_add", None) or getattr(pl, "atomic_add")
  fn(ref, idx, val)


LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_NEG_INF = float("-inf")
_POS_INF = float("inf")


# --------------------------------------------------------------------------
# Defaults (H100, tuned with benchmarks/bench_flash.py --sweep and
# benchmarks/sweep_flash.py; see benchmarks/NOTES.md "Portable Pallas flash
# kernel").
# --------------------------------------------------------------------------
BACKWARD_MODES = ("split", "fused")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tile sizes and launch parameters of the passes (immutable; derive
  variants with `dataclasses.replace`).

  bwd: "split" = dK/dV kernel + separate dQ kernel (7 matmuls per visited
  block pair, deterministic); "fused" = one kernel over KV tiles that also
  accumulates dQ into a float32 buffer with atomic adds (5 matmuls; not
  bitwise deterministic).  The fused kernel uses the `dkv` tiles / launch
  parameters; `dq` / `dq_launch` are then unused.
  """
  fwd: tuple[int, int] = (128, 128)       # (tile_q, tile_kv)
  fwd_launch: tuple[int, int] = (8, 3)    # (num_warps, num_stages)
  dkv: tuple[int, int] = (64, 128)
  dkv_launch: tuple[int, int] = (8, 3)
  dq: tuple[int, int] = (128, 64)
  dq_launch: tuple[int, int] = (8, 3)
  bwd: str = "split"

  def __post_init__(self):
    if self.bwd not in BACKWARD_MODES:
      raise ValueError(f"KernelConfig.bwd must be one of {BACKWARD_MODES}, "
                       f"got {self.bwd!r}")


# A call counts as "short" when the KV extent one query block walks (mean
# over the query blocks of the visited blocks x block_kv for concrete block
# lists; the kv length for dense calls or traced lists) is at most this.
# Measured cells (bench_flash.py, block 128): dense S=1k -> 1024, causal
# S=1k -> 576, 8 documents S=8k -> 1204, window 1024 S=8k -> 1080, causal
# S=2k -> 1088, causal S=4k -> 2112, dense S=4k -> 4096.
SHORT_KV_EXTENT = 2048

# bf16/f16, head dim <= 128: long calls (tuned, v3 of NOTES.md) ...
_LONG_D128 = KernelConfig(fwd=(128, 128), fwd_launch=(8, 3),
                          dkv=(64, 128), dkv_launch=(8, 3),
                          dq=(128, 64), dq_launch=(8, 3), bwd="split")
# ... and short calls (kv extent <= SHORT_KV_EXTENT): dK/dV on 64 x 64 tiles
# with 4 warps and 2 stages (96 KB of shared memory: 2 CTAs per SM, so one
# program's prologue / epilogue overlaps another's loop).  A/B on the H100
# (benchmarks/ab.py, NOTES.md v6): fwd+bwd +4% on 8 documents, +2.4%
# causal 1k, +1% window 1024; -3% on causal 4k, hence short calls only.
_SHORT_D128 = KernelConfig(fwd=(128, 128), fwd_launch=(8, 3),
                           dkv=(64, 64), dkv_launch=(4, 2),
                           dq=(128, 64), dq_launch=(8, 3), bwd="split")
# dK/dV tiles/launch of each backward mode, used when a caller forces the
# mode the table entry does not have (bf16/f16, head dim <= 128).
_BWD_TILES_D128 = {
    "split": dict(dkv=(64, 128), dkv_launch=(8, 3)),
    "fused": dict(dkv=(64, 128), dkv_launch=(8, 3)),
}


def default_config(head_dim: int, dtype, kv_len: int | None = None, *,
                   bwd: str | None = None) -> KernelConfig:
  """The tile configuration for a call.

  head_dim: max(H, Hv); dtype: of q/k/v; kv_len: the KV extent one query
  block walks (see SHORT_KV_EXTENT; None = long); bwd: force a backward
  mode ("split" / "fused"; None = the table's choice).  bf16/f16 with head
  dim <= 128 pick between the short and the long table entries; f32 and
  larger head dims get smaller tiles regardless of length.
  """
  dp = _pow2(head_dim)
  if jnp.dtype(dtype) == jnp.float32:
    if dp <= 64:
      cfg = KernelConfig((64, 64), (4, 2), (32, 64), (4, 2), (64, 32), (4, 2))
    elif dp <= 128:
      cfg = KernelConfig((64, 32), (4, 2), (32, 64), (4, 1), (64, 32), (4, 1))
    else:
      cfg = KernelConfig((32, 32), (4, 1), (16, 32), (4, 1), (32, 16), (4, 1))
  elif dp <= 128:
    short = kv_len is not None and kv_len <= SHORT_KV_EXTENT
    cfg = _SHORT_D128 if short else _LONG_D128
  else:
    cfg = KernelConfig((64, 64), (4, 2), (32, 64), (4, 2), (64, 32), (4, 2))
  if bwd is not None and bwd != cfg.bwd:
    if bwd not in BACKWARD_MODES:
      raise ValueError(f"bwd must be one of {BACKWARD_MODES}, got {bwd!r}")
    extra = (_BWD_TILES_D128[bwd]
             if jnp.dtype(dtype) != jnp.float32 and dp <= 128 else {})
    cfg = dataclasses.replace(cfg, bwd=bwd, **extra)
  return cfg


def _pow2(x: int) -> int:
  return max(16, 1 << (int(x) - 1).bit_length())


def _is_pow2(x: int) -> bool:
  return x >= 1 and (x & (x - 1)) == 0


# --------------------------------------------------------------------------
# Static description of one call (hashable: it is a custom_vjp nondiff arg).
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
  B: int
  T: int
  S: int
  N: int
  K: int
  T_pad: int
  S_pad: int
  Dp: int
  Dvp: int
  bq: int        # block-sparsity block sizes
  bkv: int
  fwd: tuple
  dkv: tuple
  dq: tuple
  fwd_launch: tuple
  dkv_launch: tuple
  dq_launch: tuple
  bwd: str             # "split" | "fused"
  scale: float
  softcap: float | None
  has_sinks: bool
  mask_fn: Callable | None
  score_mod: Callable | None
  q_side_b: tuple      # per q side array: its batch dim is > 1
  kv_side_b: tuple
  static_offsets: tuple | None   # (q_offset, kv_offset) or None (traced)
  sparse: bool
  contig_kv: bool      # every full kv list is one run (static fast walk)
  contig_q: bool
  Bm: int
  Hm: int
  interpret: bool

  @property
  def G(self):
    return self.N // self.K


# --------------------------------------------------------------------------
# In-kernel helpers.
# --------------------------------------------------------------------------
def _dot(a, b, *, trans_a=False, trans_b=False):
  """f32-accumulating 2-D dot; f32 operands use full (IEEE) precision."""
  ca = 0 if trans_a else 1
  cb = 1 if trans_b else 0
  prec = (lax.Precision.HIGHEST
          if (a.dtype == jnp.float32 or b.dtype == jnp.float32) else None)
  return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), precision=prec,
                         preferred_element_type=jnp.float32)


def _scores2(st: _Static, qk, b, h, q_pos, kv_pos, *, want_grad: bool):
  """qk (f32) -> (score in base-2 units, d score / d (scale*qk) or None)."""
  if st.softcap is None and st.score_mod is None:
    return qk * (st.scale * LOG2E), None
  grad = None
  if st.softcap is not None:
    t = jnp.tanh(qk * (st.scale / st.softcap))
    s = t * st.softcap
    if want_grad:
      grad = 1.0 - t * t
  else:
    s = qk * st.scale
  if st.score_mod is not None:
    fn = lambda x: jnp.asarray(st.score_mod(x, b, h, q_pos, kv_pos),
                               jnp.float32)
    if want_grad:
      s, ds = jax.jvp(fn, (s,), (jnp.ones_like(s),))
      grad = ds if grad is None else grad * ds
    else:
      s = fn(s)
    s = jnp.broadcast_to(s, qk.shape)
    if grad is not None:
      grad = jnp.broadcast_to(grad, qk.shape)
  return s * LOG2E, grad


def _keep(st: _Static, shape, b, h, q_pos, kv_pos, q_vals, kv_vals, kv_local,
          *, kv_len_mask: bool):
  """Mask of a partial tile (None = keep everything)."""
  keep = None
  if st.mask_fn is not None:
    keep = jnp.broadcast_to(
        jnp.asarray(st.mask_fn(b, h, q_pos, kv_pos, q_vals, kv_vals), bool),
        shape)
  if kv_len_mask and st.S_pad > st.S:
    ok = jnp.broadcast_to(kv_local < st.S, shape)
    keep = ok if keep is None else jnp.logical_and(keep, ok)
  return keep


def _offsets(st: _Static, offs_ref):
  if st.static_offsets is not None:
    return st.static_offsets
  return offs_ref[0], offs_ref[1]


def _lists(st: _Static, refs, bm, hm, row, r: int, dense_full: int,
           dense_part: tuple, contiguous: bool):
  """Describes the tiles to visit: [full, partial], each (count, index_fn).

  Sparse: counts/indices come from the block lists (`refs` = num_partial,
  idx_partial, num_full, idx_full) of mask row `row`, each block split into
  `r` tiles.  When every full list is known (statically) to be one ascending
  run of blocks (bands: causal, windows, documents), the full walk reads only
  the first index and needs no index load per step.  Dense: `dense_full` full
  tiles 0.., then the tiles in `dense_part`.
  """
  if not st.sparse:
    first_part = dense_part[0] if dense_part else 0
    return [(dense_full, lambda t: t),
            (len(dense_part), lambda t: t + first_part)]
  num_p, idx_p, num_f, idx_f = refs
  shift = int(r).bit_length() - 1

  def mk(num_ref, idx_ref):
    n = num_ref[bm, hm, row]
    if r == 1:
      return n, lambda t: idx_ref[bm, hm, row, t]
    return n * r, lambda t: (
        idx_ref[bm, hm, row, lax.shift_right_logical(t, shift)] * r
        + lax.bitwise_and(t, r - 1))
  full = mk(num_f, idx_f)
  if contiguous:
    first = idx_f[bm, hm, row, 0] * r
    full = (full[0], lambda t: first + t)
  return [full, mk(num_p, idx_p)]


def _walk(entry, body, carry):
  """Runs body(tile, carry) over the tiles of one list entry of `_lists`."""
  count, idx_fn = entry
  return _loop(count, lambda t, c: body(idx_fn(t), c), carry)


def _start(idx, tile: int):
  """First row of tile `idx` (with an alignment hint when traced)."""
  if isinstance(idx, (int, np.integer)):
    return int(idx) * tile
  return pl.multiple_of(idx * tile, tile)


def _loop(count, body, carry):
  if isinstance(count, int):
    if count == 0:
      return carry
    if count == 1:
      return body(0, carry)
  return lax.fori_loop(0, count, body, carry)


def _q_tile_kv_lists(st: _Static, blk, qi, b, h, tq: int, tkv: int):
  """(full, partial) KV tile walks of query tile qi (forward, dQ kernels): the
  block lists' row of its query block, or every KV tile (the ragged last ones
  partial) for dense calls."""
  mrow = lax.shift_right_logical(qi, int(st.bq // tq).bit_length() - 1) \
      if st.bq > tq else qi
  bm = b if st.Bm > 1 else 0
  hm = h if st.Hm > 1 else 0
  n_dense_full = st.S // tkv
  n_dense_tiles = -(-st.S // tkv)
  return _lists(st, blk, bm, hm, mrow, st.bkv // tkv, n_dense_full,
                tuple(range(n_dense_full, n_dense_tiles)), st.contig_kv)


def _kv_tile(st: _Static, j, tkv: int, k_ref, v_ref, ks_refs, q, q_pos, q_vals,
             kv_off, kv_iota, b, h, masked: bool, *, want_grad: bool,
             after_qk=None):
  """KV tile j of a query tile's walk (forward, dQ kernels) -> (k, v, scores
  in base 2 with dropped pairs at -inf, d score / d (scale*qk) or None, keep
  mask or None, after_qk(v) or None). `after_qk` is issued between Q K^T and
  the score transform (the dQ kernel's dP product)."""
  start = _start(j, tkv)
  k = k_ref[pl.ds(start, tkv), :]
  v = v_ref[pl.ds(start, tkv), :]
  kv_local = start + kv_iota
  kv_pos = kv_off + kv_local
  qk = _dot(q, k, trans_b=True)
  extra = None if after_qk is None else after_qk(v)
  s2, grad = _scores2(st, qk, b, h, q_pos, kv_pos, want_grad=want_grad)
  keep = None
  if masked:
    kv_vals = tuple(r[pl.ds(start, tkv)][None, :] for r in ks_refs)
    keep = _keep(st, (q.shape[0], tkv), b, h, q_pos, kv_pos, q_vals, kv_vals,
                 kv_local, kv_len_mask=True)
    if keep is not None:
      s2 = jnp.where(keep, s2, _NEG_INF)
  return k, v, s2, grad, keep, extra


# --------------------------------------------------------------------------
# Forward kernel: grid (q tiles, B*N).
# --------------------------------------------------------------------------
def _fwd_kernel(*refs, st: _Static):
  tq, tkv = st.fwd
  it = iter(refs)
  q_ref, k_ref, v_ref = next(it), next(it), next(it)
  sinks_ref = next(it) if st.has_sinks else None
  offs_ref = next(it) if st.static_offsets is None else None
  blk = tuple(next(it) for _ in range(4)) if st.sparse else None
  qs_refs = [next(it) for _ in st.q_side_b]
  ks_refs = [next(it) for _ in st.kv_side_b]
  o_ref, lse_ref = next(it), next(it)

  nqt = st.T_pad // tq
  qi = nqt - 1 - pl.program_id(0)       # heavy (late) query tiles first
  bh = pl.program_id(1)
  b = lax.div(bh, st.N)
  h = lax.rem(bh, st.N)
  q_off, kv_off = _offsets(st, offs_ref)

  q = q_ref[...]
  q_pos = q_off + qi * tq + lax.broadcasted_iota(jnp.int32, (tq, 1), 0)
  q_vals = tuple(r[...][:, None] for r in qs_refs)
  kv_iota = lax.broadcasted_iota(jnp.int32, (1, tkv), 1)

  def step(j, carry, masked):
    acc, m, l = carry
    _, v, s2, _, keep, _ = _kv_tile(st, j, tkv, k_ref, v_ref, ks_refs, q, q_pos,
                                    q_vals, kv_off, kv_iota, b, h, masked,
                                    want_grad=False)
    m_new = jnp.maximum(m, jnp.max(s2, axis=1))
    if keep is not None or st.score_mod is not None:
      m_use = jnp.where(m_new == _NEG_INF, 0.0, m_new)
    else:
      m_use = m_new
    alpha = jnp.exp2(m - m_use)
    p = jnp.exp2(s2 - m_use[:, None])
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  full, part = _q_tile_kv_lists(st, blk, qi, b, h, tq, tkv)

  carry = (jnp.zeros((tq, st.Dvp), jnp.float32),
           jnp.full((tq,), _NEG_INF, jnp.float32),
           jnp.zeros((tq,), jnp.float32))
  carry = _walk(full, lambda j, c: step(j, c, False), carry)
  carry = _walk(part, lambda j, c: step(j, c, True), carry)
  acc, m, l = carry

  if st.has_sinks:
    sink2 = sinks_ref[h].astype(jnp.float32) * LOG2E
    m_f = jnp.maximum(m, sink2)
    alpha = jnp.exp2(m - m_f)
    l = l * alpha + jnp.exp2(sink2 - m_f)
    acc = acc * alpha[:, None]
    m = m_f
  empty = l == 0.0
  inv = 1.0 / jnp.where(empty, 1.0, l)
  o_ref[...] = (acc * inv[:, None]).astype(o_ref.dtype)
  lse = m * LN2 + jnp.log(jnp.where(empty, 1.0, l))
  lse_ref[...] = jnp.where(empty, _NEG_INF, lse)


# --------------------------------------------------------------------------
# dQ kernel: grid (q tiles, B*N).
# --------------------------------------------------------------------------
def _dq_kernel(*refs, st: _Static, has_dlse: bool):
  tq, tkv = st.dq
  it = iter(refs)
  q_ref, k_ref, v_ref, do_ref, lse_ref, o_ref = (next(it) for _ in range(6))
  dlse_ref = next(it) if has_dlse else None
  offs_ref = next(it) if st.static_offsets is None else None
  blk = tuple(next(it) for _ in range(4)) if st.sparse else None
  qs_refs = [next(it) for _ in st.q_side_b]
  ks_refs = [next(it) for _ in st.kv_side_b]
  dq_ref, dl_ref = next(it), next(it)

  nqt = st.T_pad // tq
  qi = nqt - 1 - pl.program_id(0)
  bh = pl.program_id(1)
  b = lax.div(bh, st.N)
  h = lax.rem(bh, st.N)
  q_off, kv_off = _offsets(st, offs_ref)

  q = q_ref[...]
  do = do_ref[...]
  lse2 = lse_ref[...][:, None]
  # D_i = rowsum(dO * O) - dlse_i, computed here from this tile (rather than
  # by a separate XLA pass over O and dO before both kernels) and written out
  # for the dK/dV kernel, which runs after this one.
  dl = jnp.sum(do.astype(jnp.float32) * o_ref[...].astype(jnp.float32),
               axis=1)
  if has_dlse:
    dl = dl - dlse_ref[...]
  row = qi * tq + lax.broadcasted_iota(jnp.int32, (tq,), 0)
  dl = jnp.where(row < st.T, dl, 0.0)
  dl_ref[...] = dl
  dl = dl[:, None]
  q_pos = q_off + qi * tq + lax.broadcasted_iota(jnp.int32, (tq, 1), 0)
  q_vals = tuple(r[...][:, None] for r in qs_refs)
  kv_iota = lax.broadcasted_iota(jnp.int32, (1, tkv), 1)

  def step(j, dq, masked):
    # dP is issued before the exponentials so the tensor cores work on it
    # while the exp2 units compute P (measured: see benchmarks/NOTES.md).
    k, _, s2, grad, keep, dp = _kv_tile(
        st, j, tkv, k_ref, v_ref, ks_refs, q, q_pos, q_vals, kv_off, kv_iota,
        b, h, masked, want_grad=True,
        after_qk=lambda v: _dot(do, v, trans_b=True))
    p = jnp.exp2(s2 - lse2)
    ds = p * (dp - dl)
    if grad is not None:
      ds = ds * grad
      if keep is not None:
        ds = jnp.where(keep, ds, 0.0)
    return dq + _dot(ds.astype(k.dtype), k)

  full, part = _q_tile_kv_lists(st, blk, qi, b, h, tq, tkv)
  dq = jnp.zeros((tq, st.Dp), jnp.float32)
  dq = _walk(full, lambda j, c: step(j, c, False), dq)
  dq = _walk(part, lambda j, c: step(j, c, True), dq)
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


# --------------------------------------------------------------------------
# dK/dV kernel: grid (kv tiles, B*K); loops over the G query heads of the group
# and, for each, over the transposed (query-block) lists.  Works transposed
# ([kv, q] tiles) so every computed matrix feeds the next dot unshuffled.
#
# bwd="fused": the same kernel also computes each block pair's dQ
# contribution dS @ K (the 5th matmul) and adds it atomically into a float32
# [B, T_pad, N, Dp] buffer (aliased input -> output), so the separate dQ
# kernel (which recomputes S and dP: 2 more matmuls) is not needed.
# --------------------------------------------------------------------------
def _dkv_kernel(*refs, st: _Static):
  tq, tkv = st.dkv
  G = st.G
  fused = st.bwd == "fused"
  it = iter(refs)
  q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref = (next(it) for _ in range(6))
  offs_ref = next(it) if st.static_offsets is None else None
  blk = tuple(next(it) for _ in range(4)) if st.sparse else None
  qs_refs = [next(it) for _ in st.q_side_b]
  ks_refs = [next(it) for _ in st.kv_side_b]
  if fused:
    next(it)             # the zero-initialised dQ buffer, aliased to dq_ref
  dk_ref, dv_ref = next(it), next(it)
  dq_ref = next(it) if fused else None

  kj = pl.program_id(0)
  bk = pl.program_id(1)
  b = lax.div(bk, st.K)
  kvh = lax.rem(bk, st.K)
  q_off, kv_off = _offsets(st, offs_ref)

  k = k_ref[...]
  v = v_ref[...]
  kv_local = kj * tkv + lax.broadcasted_iota(jnp.int32, (tkv, 1), 0)
  kv_pos = kv_off + kv_local
  kv_vals = tuple(r[...][:, None] for r in ks_refs)
  q_iota = lax.broadcasted_iota(jnp.int32, (1, tq), 1)

  def rows(ref, g, start, n):
    return ref[pl.ds(start, n), :] if G == 1 else ref[pl.ds(start, n), g, :]

  def vec(ref, g, start, n):
    return ref[pl.ds(start, n)] if G == 1 else ref[g, pl.ds(start, n)]

  def step(i, carry, g, h, masked):
    dk, dv = carry
    start = _start(i, tq)
    q = rows(q_ref, g, start, tq)
    do = rows(do_ref, g, start, tq)
    lse2 = vec(lse_ref, g, start, tq)[None, :]
    dl = vec(dl_ref, g, start, tq)[None, :]
    q_pos = q_off + start + q_iota
    qkT = _dot(k, q, trans_b=True)                      # [tkv, tq]
    dpT = _dot(v, do, trans_b=True)     # before the exponentials, as in dQ
    s2, grad = _scores2(st, qkT, b, h, q_pos, kv_pos, want_grad=True)
    keep = None
    if masked:
      q_vals = tuple(r[pl.ds(start, tq)][None, :] for r in qs_refs)
      # Split: the kv-length mask is not needed here: padded kv rows only
      # produce dK/dV rows that are sliced off.  Fused: they would also feed
      # dQ (through exp of an unmasked score), so they are masked.
      keep = _keep(st, (tkv, tq), b, h, q_pos, kv_pos, q_vals, kv_vals,
                   kv_local, kv_len_mask=fused)
      if keep is not None:
        s2 = jnp.where(keep, s2, _NEG_INF)
    pT = jnp.exp2(s2 - lse2)
    dv = dv + _dot(pT.astype(do.dtype), do)
    dsT = pT * (dpT - dl)
    if grad is not None:
      dsT = dsT * grad
      if keep is not None:
        dsT = jnp.where(keep, dsT, 0.0)
    dsT = dsT.astype(q.dtype)
    dk = dk + _dot(dsT, q)
    if fused:
      dq_part = _dot(dsT, k, trans_a=True)              # [tq, Dp]
      idx = ((pl.ds(start, tq), slice(None)) if G == 1
             else (pl.ds(start, tq), g, slice(None)))
      _atomic_add(dq_ref, idx, dq_part)
    return dk, dv

  mrow = lax.shift_right_logical(kj, int(st.bkv // tkv).bit_length() - 1) \
      if st.bkv > tkv else kj
  bm = b if st.Bm > 1 else 0
  n_q_tiles = -(-st.T // tq)

  # Dense calls walk every tile unmasked; with a ragged kv length the fused
  # kernel must still mask the padded kv rows (see `step`).
  full_masked = fused and not st.sparse and st.S_pad > st.S

  def head(g, carry):
    h = kvh * G + g
    hm = h if st.Hm > 1 else 0
    full, part = _lists(st, blk, bm, hm, mrow, st.bq // tq, n_q_tiles, (),
                        st.contig_q)
    carry = _walk(full, lambda i, c: step(i, c, g, h, full_masked), carry)
    carry = _walk(part, lambda i, c: step(i, c, g, h, True), carry)
    return carry

  carry = (jnp.zeros((tkv, st.Dp), jnp.float32),
           jnp.zeros((tkv, st.Dvp), jnp.float32))
  carry = _loop(G, head, carry)
  dk, dv = carry
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# --------------------------------------------------------------------------
# pallas_call builders.
# --------------------------------------------------------------------------
def _blk_specs(st: _Static, arrays, which: str, ngrid: int):
  if not st.sparse:
    return [], []
  if which == "kv":
    sel = (arrays[0], arrays[1], arrays[2], arrays[3])
  else:
    sel = (arrays[4], arrays[5], arrays[6], arrays[7])
  specs = [pl.BlockSpec(a.shape, (lambda nd: (lambda *_: (0,) * nd))(a.ndim))
           for a in sel]
  return list(sel), specs


def _side_inputs(st, q_side, kv_side, q_block, kv_block, which):
  """Specs of the side arrays. q_block / kv_block: (tile, index_fn) or None
  (None = whole row)."""
  arrs, specs = [], []
  for arr, has_b in zip(q_side, st.q_side_b):
    arrs.append(arr)
    specs.append(_side_spec(st, has_b, q_block, st.T_pad, which, "q"))
  for arr, has_b in zip(kv_side, st.kv_side_b):
    arrs.append(arr)
    specs.append(_side_spec(st, has_b, kv_block, st.S_pad, which, "kv"))
  return arrs, specs


def _side_spec(st, has_b, tile, full, which, kind):
  if which == "fwd":        # grid (q tiles reversed, B*N)
    nqt = st.T_pad // tile if tile else None
    if kind == "q":
      return pl.BlockSpec(
          (None, tile),
          lambda i, bh: (lax.div(bh, st.N) if has_b else 0, nqt - 1 - i))
    return pl.BlockSpec((None, full),
                        lambda i, bh: (lax.div(bh, st.N) if has_b else 0, 0))
  # dkv: grid (kv tiles, B*K)
  if kind == "kv":
    return pl.BlockSpec(
        (None, tile), lambda j, bk: (lax.div(bk, st.K) if has_b else 0, j))
  return pl.BlockSpec((None, full),
                      lambda j, bk: (lax.div(bk, st.K) if has_b else 0, 0))


def _grid_tail(st: _Static, offs, arrays, q_side, kv_side, which: str,
               tile: int):
  """The operands (and their specs) that end every kernel's inputs: traced
  offsets, the block lists, the side arrays. which: "fwd" for the query-tile
  grids (forward, dQ: the KV lists, `tile` query rows) or "dkv" (the KV-tile
  grid: the query lists, `tile` KV rows)."""
  ins, specs = [], []
  if st.static_offsets is None:
    ins.append(offs)
    specs.append(pl.BlockSpec((2,), lambda *_: (0,)))
  a, s = _blk_specs(st, arrays, "kv" if which == "fwd" else "q", 2)
  ins += a
  specs += s
  q_block, kv_block = (tile, None) if which == "fwd" else (None, tile)
  a, s = _side_inputs(st, q_side, kv_side, q_block, kv_block, which)
  return ins + a, specs + s


def _fwd_call(st: _Static, q, k, v, sinks, arrays, q_side, kv_side, offs):
  tq, _ = st.fwd
  nqt = st.T_pad // tq
  N, G = st.N, st.G
  b_of = lambda bh: lax.div(bh, N)
  h_of = lambda bh: lax.rem(bh, N)
  ins = [q, k, v]
  specs = [
      pl.BlockSpec((None, tq, None, st.Dp),
                   lambda i, bh: (b_of(bh), nqt - 1 - i, h_of(bh), 0)),
      pl.BlockSpec((None, st.S_pad, None, st.Dp),
                   lambda i, bh: (b_of(bh), 0, lax.div(h_of(bh), G), 0)),
      pl.BlockSpec((None, st.S_pad, None, st.Dvp),
                   lambda i, bh: (b_of(bh), 0, lax.div(h_of(bh), G), 0)),
  ]
  if st.has_sinks:
    ins.append(sinks)
    specs.append(pl.BlockSpec((N,), lambda i, bh: (0,)))
  a, s = _grid_tail(st, offs, arrays, q_side, kv_side, "fwd", tq)
  ins += a
  specs += s
  out_shape = [
      jax.ShapeDtypeStruct((st.B, st.T_pad, N, st.Dvp), q.dtype),
      jax.ShapeDtypeStruct((st.B, N, st.T_pad), jnp.float32),
  ]
  out_specs = [
      pl.BlockSpec((None, tq, None, st.Dvp),
                   lambda i, bh: (b_of(bh), nqt - 1 - i, h_of(bh), 0)),
      pl.BlockSpec((None, None, tq),
                   lambda i, bh: (b_of(bh), h_of(bh), nqt - 1 - i)),
  ]
  nw, ns = st.fwd_launch
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, st=st),
      grid=(nqt, st.B * N),
      in_specs=specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_triton_compiler_params(nw, ns),
      interpret=st.interpret,
      name="jattn_flash_fwd",
  )(*ins)
  return out, lse


def _dq_call(st, q, k, v, do, lse2, out, dlse, arrays, q_side, kv_side, offs):
  """-> (dq, delta): delta [B, N, T_pad] = rowsum(do * out) - dlse (0 on
  padded rows), the dK/dV kernel's input."""
  tq, _ = st.dq
  nqt = st.T_pad // tq
  N, G = st.N, st.G
  b_of = lambda bh: lax.div(bh, N)
  h_of = lambda bh: lax.rem(bh, N)
  qmap = lambda i, bh: (b_of(bh), nqt - 1 - i, h_of(bh), 0)
  kvmap = lambda i, bh: (b_of(bh), 0, lax.div(h_of(bh), G), 0)
  vecmap = lambda i, bh: (b_of(bh), h_of(bh), nqt - 1 - i)
  ins = [q, k, v, do, lse2, out]
  specs = [
      pl.BlockSpec((None, tq, None, st.Dp), qmap),
      pl.BlockSpec((None, st.S_pad, None, st.Dp), kvmap),
      pl.BlockSpec((None, st.S_pad, None, st.Dvp), kvmap),
      pl.BlockSpec((None, tq, None, st.Dvp), qmap),
      pl.BlockSpec((None, None, tq), vecmap),
      pl.BlockSpec((None, tq, None, st.Dvp), qmap),
  ]
  if dlse is not None:
    ins.append(dlse)
    specs.append(pl.BlockSpec((None, None, tq), vecmap))
  a, s = _grid_tail(st, offs, arrays, q_side, kv_side, "fwd", tq)
  ins += a
  specs += s
  nw, ns = st.dq_launch
  return pl.pallas_call(
      functools.partial(_dq_kernel, st=st, has_dlse=dlse is not None),
      grid=(nqt, st.B * N),
      in_specs=specs,
      out_specs=[pl.BlockSpec((None, tq, None, st.Dp), qmap),
                 pl.BlockSpec((None, None, tq), vecmap)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((st.B, N, st.T_pad), jnp.float32)],
      compiler_params=_triton_compiler_params(nw, ns),
      interpret=st.interpret,
      name="jattn_flash_dq",
  )(*ins)


def _dkv_call(st, q, k, v, do, lse2, dl, arrays, q_side, kv_side, offs):
  _, tkv = st.dkv
  nkt = st.S_pad // tkv
  K, G = st.K, st.G
  b_of = lambda bk: lax.div(bk, K)
  h_of = lambda bk: lax.rem(bk, K)
  gdim = None if G == 1 else G
  qmap = lambda j, bk: (b_of(bk), 0, h_of(bk), 0)
  kmap = lambda j, bk: (b_of(bk), j, h_of(bk), 0)
  vecmap = lambda j, bk: (b_of(bk), h_of(bk), 0)
  ins = [q, k, v, do, lse2, dl]
  specs = [
      pl.BlockSpec((None, st.T_pad, gdim, st.Dp), qmap),
      pl.BlockSpec((None, tkv, None, st.Dp), kmap),
      pl.BlockSpec((None, tkv, None, st.Dvp), kmap),
      pl.BlockSpec((None, st.T_pad, gdim, st.Dvp), qmap),
      pl.BlockSpec((None, gdim, st.T_pad), vecmap),
      pl.BlockSpec((None, gdim, st.T_pad), vecmap),
  ]
  a, s = _grid_tail(st, offs, arrays, q_side, kv_side, "dkv", tkv)
  ins += a
  specs += s
  out_specs = [pl.BlockSpec((None, tkv, None, st.Dp), kmap),
               pl.BlockSpec((None, tkv, None, st.Dvp), kmap)]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype),
               jax.ShapeDtypeStruct(v.shape, v.dtype)]
  aliases = {}
  fused = st.bwd == "fused"
  if fused:
    # Every program adds into the dQ rows of its batch and head group; the
    # buffer is zero-initialised and aliased to the third output.
    dq_spec = pl.BlockSpec((None, st.T_pad, gdim, st.Dp), qmap)
    aliases = {len(ins): 2}
    ins.append(jnp.zeros((st.B, st.T_pad, st.N, st.Dp), jnp.float32))
    specs.append(dq_spec)
    out_specs.append(dq_spec)
    out_shape.append(
        jax.ShapeDtypeStruct((st.B, st.T_pad, st.N, st.Dp), jnp.float32))
  nw, ns = st.dkv_launch
  return pl.pallas_call(
      functools.partial(_dkv_kernel, st=st),
      grid=(nkt, st.B * K),
      in_specs=specs,
      out_specs=out_specs,
      out_shape=out_shape,
      input_output_aliases=aliases,
      compiler_params=_triton_compiler_params(nw, ns),
      interpret=st.interpret,
      name="jattn_flash_dkv_dq" if fused else "jattn_flash_dkv",
  )(*ins)


# --------------------------------------------------------------------------
# custom_vjp core (operates on padded arrays).
# --------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(st, q, k, v, sinks, arrays, q_side, kv_side, offs):
  return _fwd_call(st, q, k, v, sinks, arrays, q_side, kv_side, offs)


def _flash_core_fwd(st, q, k, v, sinks, arrays, q_side, kv_side, offs):
  out, lse = _fwd_call(st, q, k, v, sinks, arrays, q_side, kv_side, offs)
  return (out, lse), (q, k, v, sinks, arrays, q_side, kv_side, offs, out, lse)


def _flash_core_bwd(st, res, cts):
  q, k, v, sinks, arrays, q_side, kv_side, offs, out, lse = res
  dout, dlse = cts
  if dlse is not None:
    dlse = dlse.astype(jnp.float32)
  valid = (jnp.arange(st.T_pad) < st.T)[None, None, :]
  ok = valid & (lse > _NEG_INF)
  lse2 = jnp.where(ok, lse * LOG2E, _POS_INF)     # p = exp2(s2 - lse2) = 0 off ok
  dout = dout.astype(q.dtype)
  if st.bwd == "fused":
    # D_i = rowsum(dO * O) - dlse_i (the lse cotangent folds into the same term)
    delta = jnp.einsum("btnd,btnd->bnt", dout.astype(jnp.float32),
                       out.astype(jnp.float32))
    if dlse is not None:
      delta = delta - dlse
    delta = jnp.where(valid, delta, 0.0)
    dk, dv, dq_acc = _dkv_call(st, q, k, v, dout, lse2, delta, arrays, q_side,
                               kv_side, offs)
    dq = (dq_acc * st.scale).astype(q.dtype)
  else:
    # The dQ kernel computes D (see `_dq_kernel`), so it runs first.
    dq, delta = _dq_call(st, q, k, v, dout, lse2, out, dlse, arrays, q_side,
                         kv_side, offs)
    dk, dv = _dkv_call(st, q, k, v, dout, lse2, delta, arrays, q_side,
                       kv_side, offs)
  dsinks = None
  if st.has_sinks:
    # d lse_i / d sink_h = exp(sink_h - lse_i); the sink column has v = 0, so
    # d loss / d sink_h = -sum_i exp(sink_h - lse_i) * D_i.
    lse_v = jnp.where(valid, lse, _POS_INF)
    p_sink = jnp.exp(sinks.astype(jnp.float32)[None, :, None] - lse_v)
    dsinks = -jnp.sum(p_sink * delta, axis=(0, 2)).astype(sinks.dtype)
  none_like = lambda tree: jax.tree_util.tree_map(lambda _: None, tree)
  return (dq, dk, dv, dsinks, none_like(arrays), none_like(q_side),
          none_like(kv_side), None if offs is None else None)


_flash_core.defvjp(_flash_core_fwd, _flash_core_bwd)


# --------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------
def _pair(x, name):
  if x is None:
    return None, None
  if isinstance(x, (tuple, list)):
    if len(x) != 2:
      raise ValueError(f"{name} must be an int or a pair (dkv, dq), got {x!r}")
    return int(x[0]), int(x[1])
  return int(x), int(x)


def _launch(x, name):
  if x is None:
    return None, None, None
  if isinstance(x, (tuple, list)):
    if len(x) != 3:
      raise ValueError(
          f"{name} must be an int or a triple (fwd, dkv, dq), got {x!r}")
    return tuple(None if e is None else int(e) for e in x)
  return int(x), int(x), int(x)


def _all_contiguous(num, idx) -> bool:
  """True when the arrays are concrete and every listed run of blocks is one
  ascending run (then the kernels index the full blocks arithmetically).
  Traced arrays give False (the kernels load every index)."""
  try:
    num, idx = np.asarray(num), np.asarray(idx)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return False
  t = np.arange(idx.shape[-1])
  valid = t < num[..., None]
  run = idx == idx[..., :1] + t
  return bool(np.all(np.where(valid, run, True)))


def _kv_extent(block_sparsity, block_kv, S: int) -> int:
  """The KV extent one query block walks, for `default_config`: the mean
  number of visited (full + partial) kv blocks times block_kv when the block
  lists are concrete, else S."""
  if block_sparsity is None or block_kv is None:
    return int(S)
  try:
    n = (np.asarray(block_sparsity.full_kv_num_blocks)
         + np.asarray(block_sparsity.kv_num_blocks))
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return int(S)
  if n.size == 0:
    return int(S)
  return int(min(S, math.ceil(float(n.mean()) * int(block_kv))))


def _static_int(x):
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return int(x)
  return None


def flash_attention(q, k, v, **kwargs):
  """Block-sparse flash attention (Pallas, Triton lowering), differentiable.

  Args:
    q: [B, T, N, H]; k: [B, S, K, H]; v: [B, S, K, Hv]; one float dtype
      (bf16, f16, f32); N % K == 0 (GQA/MQA without repeating K/V).
    block_sparsity: `BlockSparsity` (arrays shaped [Bm, Hm, nq(, nkv)] etc.,
      Bm in {1, B}, Hm in {1, N}) built with blocks (block_q, block_kv); None
      means every block is full (dense attention, `mask_fn` is not allowed).
    block_q, block_kv: the block sizes of `block_sparsity` (powers of two
      >= 16).  Without a sparsity they only bound the tiles.
    mask_fn: static `evaluate(b, h, q_pos, kv_pos, q_vals, kv_vals) -> bool`,
      applied ONLY on partial blocks.  The arrays it gets broadcast against
      each other (the forward/dQ kernels pass q_pos [tq,1], kv_pos [1,tkv];
      the dK/dV kernel the transposed orientation q_pos [1,tq], kv_pos
      [tkv,1]), so it must be written with broadcasting jnp ops.
    q_side, kv_side: tuples of int32 arrays [B|1, T] / [B|1, S], indexed by
      local row / column; the kernel loads the tile of each and passes the
      values (shaped like q_pos / kv_pos) as q_vals / kv_vals.
    q_offset, kv_offset: Python ints or int32 scalars (may be traced):
      q_pos = q_offset + i, kv_pos = kv_offset + j.
    scale: defaults to 1/sqrt(H).  softcap: s = softcap * tanh(s / softcap).
    sinks: [N] float, one logit per query head joining the denominator only.
    score_mod: static `(s, b, h, q_pos, kv_pos) -> s`, elementwise in s,
      applied after softcap, before masking (on every visited block).
    return_lse: also return lse [B, N, T] float32 (natural log, includes the
      sink term; -inf for rows with no kept key and no sink).
    interpret: run the kernels in Pallas interpret mode (CPU).
    num_warps, num_stages: an int (all three passes) or a triple
      (fwd, dkv, dq); None entries take the per-head-dim default.
    backward_block_q, backward_block_kv: an int or a pair (dkv, dq) of tile
      sizes for the backward kernels; each must divide the block size.
    forward_block_q, forward_block_kv: forward tiles (default: per-head-dim
      default, capped at the block size); each must divide the block size.
    config: a `KernelConfig` replacing `default_config(...)` (its tiles are
      capped at the block size like the defaults); the explicit tile /
      launch arguments above still override its fields.
    backward: "split" (dK/dV kernel + dQ kernel) or "fused" (one kernel,
      dQ accumulated with float32 atomic adds; not bitwise deterministic);
      None = the config's `bwd`.  With "fused" the dK/dV tiles and launch
      parameters (`backward_block_q[0]`, `num_warps[1]`, ...) are the fused
      kernel's; the dQ ones are unused.

  Returns:
    out [B, T, N, Hv] in q's dtype, or (out, lse) when return_lse.
  """
  _check_options(kwargs)
  st, ops = _prepare_call(q, k, v, **kwargs)
  out, lse = _flash_core(st, *ops)
  T, Dv = q.shape[1], v.shape[-1]
  if st.T_pad != T or st.Dvp != Dv:
    out = out[:, :T, :, :Dv]
  if st.T_pad != T:
    lse = lse[:, :, :T]
  if kwargs.get("return_lse", False):
    return out, lse
  return out


def flash_attention_residual_vjp(q, k, v, out, lse, dout, dlse=None, **kwargs):
  """(dq, dk, dv) of `flash_attention(q, k, v, return_lse=True, **kwargs)` from residuals
  `out [B, T, N, Hv]`, `lse [B, N, T]` and cotangents `dout`, `dlse`, by the same backward
  kernels, without the forward. They use the residuals only through p = exp(s - lse) and
  D = rowsum(dout * out) - dlse, so `(out, lse)` may be the merged result of a larger softmax
  this call is one part of (ring attention). Sinks get no gradient here."""
  kwargs.pop("return_lse", None)
  _check_options(kwargs)
  st, ops = _prepare_call(q, k, v, **kwargs)
  B, T, N, D = q.shape
  S, Dv = k.shape[1], v.shape[-1]
  padT = lambda x: jnp.pad(x, ((0, 0), (0, st.T_pad - T), (0, 0), (0, st.Dvp - Dv)))
  lse_p = jnp.pad(lse.astype(jnp.float32), ((0, 0), (0, 0), (0, st.T_pad - T)),
                  constant_values=_NEG_INF)
  dlse_p = None if dlse is None else jnp.pad(dlse.astype(jnp.float32),
                                             ((0, 0), (0, 0), (0, st.T_pad - T)))
  grads = _flash_core_bwd(st, tuple(ops) + (padT(out.astype(jnp.float32)), lse_p),
                          (padT(dout), dlse_p))
  dq, dk, dv = grads[:3]
  return dq[:, :T, :, :D], dk[:, :S, :, :D], dv[:, :S, :, :Dv]


def _check_options(kwargs):
  """A TypeError naming the public function for an unknown or misplaced option."""
  unknown = sorted(set(kwargs) - set(_OPTIONS))
  if unknown:
    raise TypeError(f"flash_attention got unknown keyword arguments {unknown}; its options "
                    f"are {list(_OPTIONS)}")


def _prepare_call(q, k, v, *, block_sparsity: BlockSparsity | None = None,
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
                  interpret: bool = False,
                  num_warps=None,
                  num_stages=None,
                  backward_block_q=None,
                  backward_block_kv=None,
                  forward_block_q: int | None = None,
                  forward_block_kv: int | None = None,
                  config: KernelConfig | None = None,
                  backward: str | None = None):
  """Checks a call of `flash_attention` and builds its `_Static` and the padded operands
  (q, k, v, sinks, block arrays, side arrays, offsets) of `_flash_core`. Its signature is
  `flash_attention`'s (the one place the options and their defaults are written)."""
  del return_lse   # the caller's business
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("q, k, v must be [B, T, N, H], [B, S, K, H], [B, S, K, Hv]")
  B, T, N, D = q.shape
  Bk, S, K, Dk = k.shape
  if k.shape[:3] != v.shape[:3] or Bk != B or Dk != D:
    raise ValueError(f"shape mismatch: q {q.shape}, k {k.shape}, v {v.shape}")
  Dv = v.shape[-1]
  if N % K:
    raise ValueError(f"query heads {N} must be a multiple of kv heads {K}")
  if not (q.dtype == k.dtype == v.dtype):
    raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, "
                    f"{v.dtype}")
  if q.dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
    raise TypeError(f"unsupported dtype {q.dtype}")
  if T == 0 or S == 0:
    raise ValueError("empty sequence")
  if block_sparsity is None and mask_fn is not None:
    raise ValueError(
        "mask_fn given with block_sparsity=None: every block would be full and"
        " the mask never applied; pass a BlockSparsity")
  if scale is None:
    scale = 1.0 / math.sqrt(D)
  scale = float(scale)
  if softcap is not None:
    softcap = float(softcap)
    if softcap <= 0:
      raise ValueError("softcap must be > 0")
  q_side, kv_side = tuple(q_side), tuple(kv_side)
  if (q_side or kv_side) and block_sparsity is None:
    raise ValueError("side arrays need a mask_fn, hence a block_sparsity")

  if config is not None:
    if not isinstance(config, KernelConfig):
      raise TypeError(f"config must be a KernelConfig, got {type(config)}")
    cfg = config
    if backward is not None and backward != cfg.bwd:
      cfg = dataclasses.replace(cfg, bwd=backward)
  else:
    cfg = default_config(max(D, Dv), q.dtype,
                         _kv_extent(block_sparsity, block_kv, S),
                         bwd=backward)
  fq, fkv = forward_block_q, forward_block_kv
  dkv_q, dq_q = _pair(backward_block_q, "backward_block_q")
  dkv_kv, dq_kv = _pair(backward_block_kv, "backward_block_kv")
  nw = _launch(num_warps, "num_warps")
  ns = _launch(num_stages, "num_stages")
  tiles_q = [fq or cfg.fwd[0], dkv_q or cfg.dkv[0], dq_q or cfg.dq[0]]
  tiles_kv = [fkv or cfg.fwd[1], dkv_kv or cfg.dkv[1], dq_kv or cfg.dq[1]]
  explicit_q = [fq, dkv_q, dq_q]
  explicit_kv = [fkv, dkv_kv, dq_kv]

  if block_sparsity is not None:
    if block_q is None or block_kv is None:
      raise ValueError("block_q and block_kv (the sparsity block sizes) are "
                       "required with a block_sparsity")
    bq, bkv = int(block_q), int(block_kv)
    for name, bsz in (("block_q", bq), ("block_kv", bkv)):
      if not _is_pow2(bsz) or bsz < 16:
        raise ValueError(f"{name}={bsz} must be a power of two >= 16")
    nq, nkv = -(-T // bq), -(-S // bkv)
    bs = BlockSparsity(*(jnp.asarray(a, jnp.int32) for a in block_sparsity))
    Bm, Hm = int(bs.kv_num_blocks.shape[0]), int(bs.kv_num_blocks.shape[1])
    expect = {
        "kv_num_blocks": (Bm, Hm, nq), "kv_indices": (Bm, Hm, nq, nkv),
        "full_kv_num_blocks": (Bm, Hm, nq),
        "full_kv_indices": (Bm, Hm, nq, nkv),
        "q_num_blocks": (Bm, Hm, nkv), "q_indices": (Bm, Hm, nkv, nq),
        "full_q_num_blocks": (Bm, Hm, nkv), "full_q_indices": (Bm, Hm, nkv, nq),
    }
    for f, shp in expect.items():
      if tuple(getattr(bs, f).shape) != shp:
        raise ValueError(f"block_sparsity.{f} has shape "
                         f"{tuple(getattr(bs, f).shape)}, expected {shp} for "
                         f"T={T}, S={S}, block=({bq}, {bkv})")
    if Bm not in (1, B) or Hm not in (1, N):
      raise ValueError(f"block_sparsity batch/head dims ({Bm}, {Hm}) must be "
                       f"1 or ({B}, {N})")
    tiles_q = [t if e else min(t, bq) for t, e in zip(tiles_q, explicit_q)]
    tiles_kv = [t if e else min(t, bkv) for t, e in zip(tiles_kv, explicit_kv)]
    arrays = tuple(bs)
    contig_kv = _all_contiguous(block_sparsity.full_kv_num_blocks,
                                block_sparsity.full_kv_indices)
    contig_q = _all_contiguous(block_sparsity.full_q_num_blocks,
                               block_sparsity.full_q_indices)
    T_pad, S_pad = nq * bq, nkv * bkv
  else:
    capq = _pow2(T)
    capkv = _pow2(S)
    if block_q is not None:
      capq = min(capq, int(block_q))
    if block_kv is not None:
      capkv = min(capkv, int(block_kv))
    tiles_q = [t if e else min(t, capq) for t, e in zip(tiles_q, explicit_q)]
    tiles_kv = [t if e else min(t, capkv)
                for t, e in zip(tiles_kv, explicit_kv)]
    bq, bkv = max(tiles_q), max(tiles_kv)
    Bm = Hm = 1
    arrays = ()
    contig_kv = contig_q = False
    T_pad, S_pad = -(-T // bq) * bq, -(-S // bkv) * bkv
  for t in tiles_q + tiles_kv:
    if not _is_pow2(t) or t < 16:
      raise ValueError(f"tile size {t} must be a power of two >= 16")
  for t in tiles_q:
    if bq % t:
      raise ValueError(f"query tile {t} must divide the block size {bq}")
  for t in tiles_kv:
    if bkv % t:
      raise ValueError(f"kv tile {t} must divide the block size {bkv}")

  launches = [(cfg.fwd_launch), (cfg.dkv_launch), (cfg.dq_launch)]
  launches = [(nw[i] or launches[i][0], ns[i] or launches[i][1])
              for i in range(3)]

  q_side_b, kv_side_b = [], []
  q_side_p, kv_side_p = [], []
  for arr in q_side:
    arr = jnp.asarray(arr, jnp.int32)
    if arr.ndim != 2 or arr.shape[0] not in (1, B) or arr.shape[1] != T:
      raise ValueError(f"q side array must be [B|1, T], got {arr.shape}")
    q_side_b.append(arr.shape[0] > 1)
    q_side_p.append(jnp.pad(arr, ((0, 0), (0, T_pad - T))))
  for arr in kv_side:
    arr = jnp.asarray(arr, jnp.int32)
    if arr.ndim != 2 or arr.shape[0] not in (1, B) or arr.shape[1] != S:
      raise ValueError(f"kv side array must be [B|1, S], got {arr.shape}")
    kv_side_b.append(arr.shape[0] > 1)
    kv_side_p.append(jnp.pad(arr, ((0, 0), (0, S_pad - S))))

  qo, ko = _static_int(q_offset), _static_int(kv_offset)
  if qo is not None and ko is not None:
    static_offsets, offs = (qo, ko), None
  else:
    static_offsets = None
    offs = jnp.stack([jnp.asarray(q_offset, jnp.int32).reshape(()),
                      jnp.asarray(kv_offset, jnp.int32).reshape(())])

  has_sinks = sinks is not None
  if has_sinks:
    sinks = jnp.asarray(sinks)
    if sinks.shape != (N,):
      raise ValueError(f"sinks must have shape [{N}], got {sinks.shape}")
    if not jnp.issubdtype(sinks.dtype, jnp.floating):
      sinks = sinks.astype(jnp.float32)

  Dp, Dvp = _pow2(D), _pow2(Dv)
  st = _Static(
      B=B, T=T, S=S, N=N, K=K, T_pad=T_pad, S_pad=S_pad, Dp=Dp, Dvp=Dvp,
      bq=bq, bkv=bkv,
      fwd=(tiles_q[0], tiles_kv[0]), dkv=(tiles_q[1], tiles_kv[1]),
      dq=(tiles_q[2], tiles_kv[2]),
      fwd_launch=launches[0], dkv_launch=launches[1], dq_launch=launches[2],
      bwd=cfg.bwd,
      scale=scale, softcap=softcap, has_sinks=has_sinks,
      mask_fn=mask_fn, score_mod=score_mod,
      q_side_b=tuple(q_side_b), kv_side_b=tuple(kv_side_b),
      static_offsets=static_offsets, sparse=block_sparsity is not None,
      contig_kv=contig_kv, contig_q=contig_q,
      Bm=Bm, Hm=Hm, interpret=bool(interpret))

  def pad(x, L, Lp, Dx, Dxp):
    if Lp == L and Dxp == Dx:
      return x
    return jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, Dxp - Dx)))

  qp = pad(q, T, T_pad, D, Dp)
  kp = pad(k, S, S_pad, D, Dp)
  vp = pad(v, S, S_pad, Dv, Dvp)
  return st, (qp, kp, vp, sinks, arrays, tuple(q_side_p), tuple(kv_side_p), offs)


# help() / IDEs show the real keyword arguments of the public entry point.
flash_attention.__signature__ = inspect.signature(_prepare_call)
_OPTIONS = tuple(flash_attention.__signature__.parameters)[3:]
