"""Hopper (sm_90) flash attention with Pallas' Mosaic GPU backend: forward and backward.

FlashAttention-3 structure, written for this project (see benchmarks/NOTES.md, "Hopper (Mosaic
GPU) kernel", for the tuning log):

* forward: one CTA = 3 warpgroups. Two *consumer* warpgroups own `block_q` query rows each
  (a 2*block_q row tile per CTA); one *producer* warpgroup streams K and V blocks into a
  `stages`-deep ring of shared-memory slots with TMA, each slot guarded by a "loaded" barrier
  (TMA transaction count) and a "free" barrier (both consumers arrive when done with it).
  Matrix products are wgmma (Q from SMEM, K^T / V from SMEM, P from registers, f32
  accumulators in registers). The two consumers ping-pong through a schedule barrier, so the
  softmax of one overlaps the tensor-core work of the other (as FA3 does); the next K block's
  wait is issued behind the P@V product.
* the KV loop of a CTA runs over [lo, hi) blocks only (causal / window ranges computed from
  static offsets), in three sections: masked blocks before, unmasked ("full") blocks, masked
  blocks after. Full blocks run no mask arithmetic at all.
* segment ids (documents): the same three sections, with bounds that depend on the ids. They
  are computed outside the kernel (jnp, from per-tile / per-block min and max ids, intersected
  with the static ranges) into an int32 table [B, tiles, 4] that each warpgroup reads as four
  scalars; the ids of a tile's rows and of each streamed block travel by TMA next to Q / K
  (same barriers) into small SMEM buffers and are loaded as WGMMA row / column vectors, so a
  partial block's mask is one broadcast compare. See `_seg_block_ranges`.
* backward: dK/dV kernel (grid over KV tiles; the producer streams Q, dO, lse, delta blocks
  of every query head of the GQA group, so dK/dV of a KV head are accumulated in registers and
  never reduced afterwards) and a dQ kernel (grid over query tiles, as the forward). Both
  recompute P from the forward's log-sum-exp (base 2). Masked and unmasked sections as above.
  The dQ kernel runs first: it also loads the O tile next to dO and writes
  delta = rowsum(dO * O) - dlse for the dK/dV kernel (no separate XLA pass over O and dO).
  `backward="fused"` (experimental) instead accumulates dQ inside the dK/dV kernel with f32
  TMA reduce-adds (5 matrix products instead of 7).

Semantics follow docs/ARCHITECTURE.md for the features this kernel has: causal with static
offsets (absolute positions `q_offset + i`, `kv_offset + j`), sliding window (left, right),
segment ids (row i meets column j iff q_ids[b, i] == kv_ids[b, j]), GQA, `return_lse`
(natural-log lse [B, N, T] float32, differentiable), any T and S (padded to tile multiples
inside; padded keys are masked), head dims 64..256 (multiples of 64 natively, others
zero-padded). Fully masked rows give out = 0, lse = -inf and zero gradients.
Dtypes bf16 and f16.

Entry point: `hopper_attention(q, k, v, ...)`; reference: `hopper_reference.hopper_attention_reference`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["hopper_attention", "HopperConfig", "default_config", "supported", "mgpu_available"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Version shims: the only place that touches APIs that moved between jax releases
# (0.10.2 on CPU/CI, 0.11.2 on the GPU machine).
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _api():
  """Returns a namespace of the Mosaic GPU Pallas names this module uses."""
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  L = plgpu.Layout
  if hasattr(L.WGMMA, "reduce"):
    row, col = L.WGMMA.reduce(1), L.WGMMA.reduce(0)  # [M] / [N] vectors of an [M, N] tile
  else:  # pragma: no cover - newer jax
    row, col = L.WGMMA_ROW, L.WGMMA_COL
  interp = None
  for modname in ("jax._src.pallas.mosaic_gpu.interpret.params",
                  "jax._src.pallas.mosaic_gpu.interpret"):
    try:
      mod = __import__(modname, fromlist=["InterpretGPUParams"])
      interp = getattr(mod, "InterpretGPUParams", None)
      if interp is not None:
        break
    except ImportError:
      pass
  interp = getattr(plgpu, "InterpretParams", None) or interp
  return dict(pl=pl, plgpu=plgpu, WGMMA=L.WGMMA, ROW=row, COL=col, InterpretParams=interp)


def mgpu_available() -> bool:
  try:
    _api()
    return True
  except Exception:  # pragma: no cover - depends on the installation
    return False


# --------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HopperConfig:
  """Tiles and pipeline depth. A CTA has 2 consumer warpgroups + 1 producer warpgroup."""
  block_q: int = 64          # forward: query rows per consumer warpgroup (wgmma M = 64)
  block_kv: int = 128        # forward: KV rows per pipeline step
  stages: int = 2            # forward: depth of the K/V ring
  schedule_barrier: bool = True   # forward: ping-pong the two consumers
  bwd_block_q: int = 64      # dQ: rows per consumer; dK/dV: query rows per step
  bwd_block_kv: int = 64     # dK/dV: KV rows per consumer; dQ: KV rows per step
  bwd_stages: int = 2
  tiles_fastest: bool = False   # grid order: sequence tiles vary fastest (else heads)
  reduction_scratch_bytes: int | None = None   # Mosaic's SMEM scratch (default 2048)
  consumer_registers: int = 232   # 2*128*232 + 128*40 <= 64K registers per SM
  producer_registers: int = 40

  def __post_init__(self):
    for f in ("block_q", "bwd_block_q", "bwd_block_kv"):
      if getattr(self, f) != 64:
        raise ValueError(f"{f} must be 64 (the wgmma M of one warpgroup), got {getattr(self, f)}")
    if self.block_kv % 64:
      raise ValueError(f"block_kv must be a multiple of 64, got {self.block_kv}")
    if self.stages < 1 or self.bwd_stages < 1:
      raise ValueError("stages must be >= 1")
    if 2 * self.consumer_registers + self.producer_registers > 512:
      raise ValueError("2 * consumer_registers + producer_registers must be <= 512 (64K "
                       "registers per SM over 3 warpgroups of 128 threads)")


def default_config(head_dim: int) -> HopperConfig:
  d = _padded_head_dim(head_dim)
  if d <= 64:
    return HopperConfig(block_kv=128, stages=3)
  if d <= 128:
    return HopperConfig(block_kv=128, stages=2)
  return HopperConfig(block_kv=64, stages=2)


def _padded_head_dim(d: int) -> int:
  return max(64, -(-d // 64) * 64)


def supported(head_dim: int, dtype, *, backward: bool = False) -> str | None:
  """A reason this kernel cannot run the shape, or None."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype must be bf16 or f16, got {jnp.dtype(dtype).name}"
  if not 1 <= head_dim <= 256:
    return f"head_dim must be in [1, 256], got {head_dim}"
  return None


def bwd_kernel_supports(head_dim: int) -> bool:
  """The Mosaic backward keeps dK and dV (64 x D f32 each) in registers: D <= 128."""
  return _padded_head_dim(head_dim) <= 128


# --------------------------------------------------------------------------------------------
# Static description of one call (hashable: a custom_vjp nondiff argument).
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
  B: int
  T: int       # real query length
  S: int       # real kv length
  Tp: int      # padded query length (multiple of every q tile)
  Sp: int      # padded kv length
  N: int
  K: int
  D: int       # padded head dim
  dtype: Any
  scale: float
  causal: bool
  q_off: int
  kv_off: int
  left: int | None
  right: int | None
  cfg: HopperConfig
  interpret: bool
  segments: bool = False   # segment ids (documents): per-tile block ranges + in-kernel equality

  @property
  def G(self):
    return self.N // self.K

  @property
  def c(self):   # scores -> base-2 exponent units
    return self.scale * LOG2E

  @property
  def r_eff(self):  # how far right of its position a query may look
    if self.causal:
      return 0 if self.right is None else min(0, self.right)
    return self.right

  @property
  def masked_anything(self):
    return self.causal or self.left is not None or self.right is not None


# Block ranges. All inputs are int32 scalars (traced inside kernels) or Python ints; divisions
# only ever see non-negative numerators.
def _i32(x):
  return jnp.asarray(x, jnp.int32)


def _cdiv_nonneg(x, d):
  return lax.div(jnp.maximum(_i32(x), 0) + (d - 1), _i32(d))


def _div_nonneg(x, d):
  return lax.div(jnp.maximum(_i32(x), 0), _i32(d))


def _order(lo, flo, fhi, hi):
  """Clamps to lo <= flo <= fhi <= hi (scalar min/max only: no selects inside kernels)."""
  lo = jnp.minimum(lo, hi)
  flo = jnp.minimum(jnp.maximum(flo, lo), hi)
  fhi = jnp.minimum(jnp.maximum(fhi, flo), hi)
  return lo, flo, fhi, hi


def _kv_ranges(st: _Static, r0, rows: int, bkv: int):
  """KV block ranges for query rows [r0, r0 + rows): (lo, flo, fhi, hi).

  Blocks in [lo, hi) are visited; those in [flo, fhi) need no mask for any of these rows.
  """
  nkv = st.Sp // bkv
  r0 = _i32(r0)
  last = jnp.minimum(r0 + rows, st.T) - 1
  qp0 = st.q_off + r0              # first position of the tile
  qp1 = st.q_off + last            # last (real) position of the tile
  lo, hi = _i32(0), _i32(nkv)
  flo, fhi = _i32(0), _i32(st.S // bkv)
  re = st.r_eff
  if re is not None:
    x = qp1 + re - st.kv_off       # keys at kv index <= x are reachable
    hi = jnp.minimum(_div_nonneg(x + bkv, bkv), nkv)       # floor(x / bkv) + 1, or 0 if x < 0
    y = qp0 + re - st.kv_off + 1   # blocks wholly at kv index <= qp0 + re
    fhi = jnp.minimum(fhi, _div_nonneg(y, bkv))
  if st.left is not None:
    lo = _div_nonneg(qp0 - st.left - st.kv_off, bkv)
    flo = _cdiv_nonneg(qp1 - st.left - st.kv_off, bkv)
  return _order(lo, flo, fhi, hi)


def _q_ranges(st: _Static, c0, rows: int, bq: int):
  """Query block ranges for KV rows [c0, c0 + rows) (the dK/dV pass): (lo, flo, fhi, hi)."""
  nq = st.Tp // bq
  c0 = _i32(c0)
  last = jnp.minimum(c0 + rows, st.S) - 1
  kp0 = st.kv_off + c0
  kp1 = st.kv_off + last
  lo, hi = _i32(0), _i32(nq)
  flo, fhi = _i32(0), _i32(nq)
  re = st.r_eff
  if re is not None:
    # q block i reaches kv position kp0 iff q_off + i*bq + bq - 1 + re >= kp0.
    lo = _div_nonneg(kp0 - re - st.q_off, bq)
    # every row of block i reaches kp1 iff q_off + i*bq + re >= kp1.
    flo = _cdiv_nonneg(kp1 - re - st.q_off, bq)
  if st.left is not None:
    x = kp1 + st.left - st.q_off   # q index <= x reaches kp1 from the right side
    hi = jnp.minimum(_div_nonneg(x + bq, bq), nq)
    y = kp0 + st.left - st.q_off + 1
    fhi = jnp.minimum(_div_nonneg(y, bq), nq)
  return _order(lo, flo, fhi, hi)


# Segment ids (document / packed-sequence masks). Unlike causal and window ranges, these
# depend on data, so they cannot be derived from the program ids alone: the per-tile block
# ranges are computed OUTSIDE the kernel with jnp (a few [B, tiles, blocks] compares, negligible
# next to the attention) into a small int32 table [B, tiles, 4] = (lo, flo, fhi, hi) that every
# warpgroup reads as four scalars at the start of its CTA (`_read_ranges`). The table already
# holds the intersection with the static causal / window / padding ranges, so the kernels keep
# one code path: the same masked | unmasked | masked sections, now with data-dependent bounds.
def _seg_block_ranges(a_seg, b_seg, a_rows: int, b_blk: int):
  """Segment-only ranges: for each (batch, tile of `a_rows` rows of a) the b-blocks (of `b_blk`)
  that can hold a pair with equal ids, and a run of blocks where every pair has equal ids.

  From per-tile / per-block min and max ids: a block is visited iff the [min, max] intervals
  meet (exact for sorted ids, i.e. documents; unsorted ids stay correct, the range then just
  covers blocks the in-kernel mask zeroes); it is full iff both sides hold one and the same
  id. Returns (lo, flo, fhi, hi), each int32 [B, tiles]: visit [lo, hi), no mask on [flo, fhi)
  (the first run of full blocks; for sorted ids the only one). No block meets: lo = nb, hi = 0.
  """
  B = a_seg.shape[0]
  a = a_seg.reshape(B, -1, a_rows)
  bb = b_seg.reshape(B, -1, b_blk)
  amin, amax = a.min(-1)[:, :, None], a.max(-1)[:, :, None]       # [B, tiles, 1]
  bmin, bmax = bb.min(-1)[:, None, :], bb.max(-1)[:, None, :]     # [B, 1, blocks]
  nb = bb.shape[1]
  j = jnp.arange(nb, dtype=jnp.int32)
  meet = (bmin <= amax) & (bmax >= amin)
  full = (amin == amax) & (bmin == bmax) & (bmin == amin)
  lo = jnp.min(jnp.where(meet, j, nb), -1)
  hi = jnp.max(jnp.where(meet, j + 1, 0), -1)
  flo = jnp.min(jnp.where(full, j, nb), -1)
  fhi = jnp.min(jnp.where((j >= flo[..., None]) & ~full, j, nb), -1)
  return lo, flo, fhi, hi


def _combine_ranges(static, seg):
  """Intersection of the static and the segment ranges, ordered: [B, tiles, 4] int32.

  Visit: a block must be reachable under both constraints. No mask: it must be full under
  both (both full sets are single runs, so intersecting the runs gives exactly that)."""
  slo, sflo, sfhi, shi = static   # [tiles] or scalars: broadcast against seg's [B, tiles]
  glo, gflo, gfhi, ghi = seg
  r = _order(jnp.maximum(slo, glo), jnp.maximum(sflo, gflo), jnp.minimum(sfhi, gfhi),
             jnp.minimum(shi, ghi))
  return jnp.stack([x.astype(jnp.int32) for x in r], axis=-1)


def _q_tile_kv_table(st: _Static, seg, rows: int, bkv: int):
  """Forward / dQ: per (batch, query tile of `rows`) the KV block ranges (blocks of `bkv`)."""
  qseg, kvseg = seg
  r0 = jnp.arange(st.Tp // rows, dtype=jnp.int32) * rows
  return _combine_ranges(_kv_ranges(st, r0, rows, bkv),
                         _seg_block_ranges(qseg, kvseg, rows, bkv))


def _kv_tile_q_table(st: _Static, seg, rows: int, bq: int):
  """dK/dV: per (batch, KV tile of `rows`) the query block ranges (blocks of `bq`)."""
  qseg, kvseg = seg
  c0 = jnp.arange(st.Sp // rows, dtype=jnp.int32) * rows
  return _combine_ranges(_q_ranges(st, c0, rows, bq),
                         _seg_block_ranges(kvseg, qseg, rows, bq))


def _read_ranges(rng_ref, b, tile):
  """The four range scalars of this CTA, read straight from GMEM (a scalar `memref.load` per
  thread; 16 bytes, once per CTA, served from L2 after the first warp)."""
  return tuple(rng_ref[b, tile, x] for x in range(4))


def _seg_keep(q_ids, kv_ids, shape, q_axis: int):
  """keep[i, j] = (q id of row i == kv id of column j) on a [rows, cols] tile.

  `q_ids`/`kv_ids` are the vectors of the tile's two axes (registers, in the WGMMA row / column
  layouts, so the broadcasts below are layout-preserving, as for m_i and lse)."""
  kv_axis = 1 - q_axis
  return (lax.broadcast_in_dim(q_ids, shape, [q_axis])
          == lax.broadcast_in_dim(kv_ids, shape, [kv_axis]))


def _and(a, b):
  return b if a is None else a & b


def _keep(st: _Static, q_pos, kv_pos, kv_idx=None):
  keep = None

  def conj(a, b):
    return b if a is None else a & b
  if kv_idx is not None and st.Sp != st.S:
    keep = conj(keep, kv_idx < st.S)
  if st.causal:
    keep = conj(keep, kv_pos <= q_pos)
  if st.left is not None:
    keep = conj(keep, kv_pos >= q_pos - st.left)
  if st.right is not None:
    keep = conj(keep, kv_pos <= q_pos + st.right)
  return keep


def _loop3(lo, flo, fhi, hi, body, carry):
  """Masked blocks [lo, flo), unmasked [flo, fhi), masked [fhi, hi)."""
  carry = lax.fori_loop(lo, flo, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(flo, fhi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(fhi, hi, functools.partial(body, masked=True), carry)


def _dots_nt(st: _Static, pairs, between=None):
  """[a @ b.T for (a_ref, b_ref) in pairs] as f32 (a, b in SMEM), issued together.

  Compiled: wgmma into scoped accumulators, B transposed through `transpose_ref`; `between()`
  runs after the products are issued and before they are awaited (the schedule barrier).
  Interpret mode: its wgmma takes neither a transposed nor a register operand, so there the
  product is a jnp dot of the SMEM contents (everything else - TMA, barriers, warpgroups,
  ranges, masks, softmax - runs as compiled).
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  if st.interpret:
    if between is not None:
      between()
    return tuple(lax.dot_general(x[...], y[...], (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32) for x, y in pairs)
  shapes = [(x.shape[0], y.shape[0]) for x, y in pairs]

  def fn(*refs):
    for r, (x, y) in zip(refs, pairs):
      plgpu.wgmma(r, x, plgpu.transpose_ref(y, (1, 0)))
    if between is not None:
      between()
    return tuple(r[...] for r in refs)
  return pl.run_scoped(fn, *[plgpu.ACC(sh, jnp.float32) for sh in shapes])


def _mma_acc(st: _Static, accs, pairs, after_issue=None):
  """accs[i] + pairs[i][0] @ pairs[i][1] (A: registers array, B: SMEM ref), f32.

  Compiled: `pl.run_state` over `plgpu.ACC.init(acc)` (accumulates in place, in registers);
  `after_issue()` runs while the products are in flight.
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  if st.interpret:
    if after_issue is not None:
      after_issue()
    return tuple(acc + jnp.dot(x, y[...], preferred_element_type=jnp.float32)
                 for acc, (x, y) in zip(accs, pairs))

  def fn(refs):
    for r, (x, y) in zip(refs, pairs):
      plgpu.wgmma(r, x, y)
    if after_issue is not None:
      after_issue()
  return tuple(pl.run_state(fn)(tuple(plgpu.ACC.init(x) for x in accs)))


def _cast(st: _Static, x, layout: str):
  """plgpu.layout_cast (a no-op in interpret mode, which has no CPU rule for it)."""
  if st.interpret:
    return x
  a = _api()
  return a["plgpu"].layout_cast(x, a[layout])


def _iota(st: _Static, shape, dim: int):
  if st.interpret:
    return lax.broadcasted_iota(jnp.int32, shape, dim)
  a = _api()
  return a["plgpu"].broadcasted_iota(jnp.int32, shape, dim, layout=a["WGMMA"])


def _load_vec(st: _Static, ref, layout: str):
  """ref -> registers: ROW / COL vectors, or a swizzled [64, D] tile as "WGMMA"."""
  if st.interpret:
    return ref[...]
  a = _api()
  return a["plgpu"].load(ref, (), layout=a[layout])


def _drain(n, stages: int, free_barriers):
  """Producer epilogue: observe the last `stages` "free" phases it did not wait for.

  The hardware does not need it (the CTA ends), but every phase of a barrier a thread waits on
  must be observed by it for the interpret mode; it costs the idle producer nothing.
  """
  plgpu = _api()["plgpu"]

  def body(t, carry):
    for bar in free_barriers:
      plgpu.barrier_wait(bar.at[lax.rem(t, stages)])
    return carry
  lax.fori_loop(jnp.maximum(n - stages, 0), n, body, None)


def _smem_transforms(D: int, dtype):
  plgpu = _api()["plgpu"]
  swz = min(128, D * jnp.dtype(dtype).itemsize)
  return (plgpu.TilingTransform((8, swz // jnp.dtype(dtype).itemsize)),
          plgpu.SwizzleTransform(swz))


def _compiler_params(cfg: HopperConfig | None = None):
  plgpu = _api()["plgpu"]
  kw = {}
  if cfg is not None and cfg.reduction_scratch_bytes is not None:
    kw["reduction_scratch_bytes"] = cfg.reduction_scratch_bytes
  return plgpu.CompilerParams(approx_math=True, **kw)


def _interpret_arg(st: _Static):
  if not st.interpret:
    return {}
  cls = _api()["InterpretParams"]
  if cls is None:
    raise NotImplementedError("this jax has no Mosaic GPU interpret mode")
  return {"interpret": cls()}


# --------------------------------------------------------------------------------------------
# Forward kernel.
# --------------------------------------------------------------------------------------------
def _fwd_call(st: _Static, q, k, v, seg=None):
  """seg: None, or (q_seg [B, Tp], kv_seg [B, Sp]) int32 (edge-padded) when st.segments."""
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.block_q, cfg.block_kv, cfg.stages
  D, dtype, G = st.D, st.dtype, st.G
  n_cta = st.Tp // (2 * bq)
  c = st.c
  segs = st.segments

  def kernel(q_ref, k_ref, v_ref, *rest):
    if segs:
      (qseg_ref, kvseg_ref, rng_ref, o_ref, lse_ref, q_smem, k_smem, v_smem, lse_smem,
       q_bar, k_bar, v_bar, k_free, v_free, sched, qseg_smem, kvseg_smem) = rest
    else:
      (o_ref, lse_ref, q_smem, k_smem, v_smem, lse_smem,
       q_bar, k_bar, v_bar, k_free, v_free, sched) = rest
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    ci = lax.axis_index("q_seq")
    if st.causal:  # longest rows first
      ci = (n_cta - 1) - ci
    wg = lax.axis_index("wg")
    r0 = ci * (2 * bq)
    if segs:   # data-dependent ranges, precomputed per (batch, tile): see _seg_block_ranges
      lo, flo, fhi, hi = _read_ranges(rng_ref, b, ci)
    else:
      lo, flo, fhi, hi = _kv_ranges(st, r0, 2 * bq, bkv)
    n = hi - lo

    def sched_sync():
      if cfg.schedule_barrier:
        plgpu.barrier_arrive(sched)
        plgpu.barrier_wait(sched)

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(cfg.consumer_registers, action="increase")
      q_base = r0 + wg * bq
      qs = q_smem.at[wg]
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_base, bq), h], qs, q_bar.at[wg])
      if segs:   # this consumer's row ids ride on the Q barrier (its 2nd arrival)
        plgpu.copy_gmem_to_smem(qseg_ref.at[b, pl.ds(q_base, bq)], qseg_smem.at[wg],
                                q_bar.at[wg])
      plgpu.barrier_wait(q_bar.at[wg])
      # Loop-invariant, in registers (WGMMA row layout: 2 values per thread).
      q_ids = _load_vec(st, qseg_smem.at[wg], "ROW") if segs else None
      m_i = _cast(st, jnp.full((bq,), _NEG_INF, jnp.float32), "ROW")
      l_i = _cast(st, jnp.full((bq,), 0.0, jnp.float32), "ROW")
      acc = _cast(st, jnp.full((bq, D), 0.0, jnp.float32), "WGMMA")

      @pl.when(n > 0)
      def _():
        plgpu.barrier_wait(k_bar.at[0])

      pl.when(wg == 1)(sched_sync)

      def step(j, carry, masked):
        acc, m_i, l_i = carry
        t = j - lo
        slot = lax.rem(t, stages)
        if masked and segs:
          # The block's KV ids share the K slot (and its barrier, already waited on): read
          # them before K's "free" arrival lets the producer overwrite the slot.
          kv_ids = _load_vec(st, kvseg_smem.at[slot], "COL")

        s, = _dots_nt(st, [(qs, k_smem.at[slot])], between=sched_sync)
        plgpu.barrier_arrive(k_free.at[slot])
        if masked:
          rows = _iota(st, (bq, bkv), 0)
          cols = _iota(st, (bq, bkv), 1)
          kv_idx = cols + j * bkv
          keep = _keep(st, rows + (st.q_off + q_base), kv_idx + st.kv_off, kv_idx)
          if segs:
            keep = _and(keep, _seg_keep(q_ids, kv_ids, (bq, bkv), 0))
          if keep is not None:
            s = jnp.where(keep, s, _NEG_INF)
        m_new = jnp.maximum(m_i, s.max(axis=1) * c)
        m_use = jnp.where(m_new == _NEG_INF, 0.0, m_new) if masked else m_new
        alpha = jnp.exp2(m_i - m_use)
        p = jnp.exp2(s * c - lax.broadcast_in_dim(m_use, s.shape, [0]))
        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        l_i = l_i * alpha
        p16 = p.astype(dtype)

        def end_softmax():
          if cfg.schedule_barrier:
            plgpu.barrier_arrive(sched)
          plgpu.barrier_wait(v_bar.at[slot])
          if cfg.schedule_barrier:
            plgpu.barrier_wait(sched)
        if D <= 128:
          l_i = l_i + p.sum(axis=1)
          acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
          end_softmax()
        else:
          end_softmax()
          l_i = l_i + p.sum(axis=1)

        def wait_next_k():
          nxt = t + 1

          @pl.when(nxt < n)
          def _():
            plgpu.barrier_wait(k_bar.at[lax.rem(nxt, stages)])
        acc, = _mma_acc(st, (acc,), [(p16, v_smem.at[slot])], after_issue=wait_next_k)
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, m_new, l_i

      acc, m_i, l_i = _loop3(lo, flo, fhi, hi, step, (acc, m_i, l_i))
      pl.when(wg == 0)(sched_sync)

      empty = l_i == 0.0
      l_safe = jnp.where(empty, 1.0, l_i)
      out = acc * lax.broadcast_in_dim(1.0 / l_safe, acc.shape, [0])
      qs[...] = out.astype(dtype)
      lse_smem.at[wg][...] = jnp.where(empty, _NEG_INF, m_i + jnp.log(l_safe) * LOG2E)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qs, o_ref.at[b, pl.ds(q_base, bq), h])
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(q_base, bq)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(cfg.producer_registers, action="decrease")
      kvh = lax.div(h, jnp.asarray(G, h.dtype))

      def load_k(t, slot):
        sl = (b, pl.ds((lo + t) * bkv, bkv), kvh)
        plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[slot], k_bar.at[slot])
        if segs:   # the block's KV ids: same slot index, same barrier (2nd arrival)
          plgpu.copy_gmem_to_smem(kvseg_ref.at[b, pl.ds((lo + t) * bkv, bkv)],
                                  kvseg_smem.at[slot], k_bar.at[slot])

      def load(t, slot):
        sl = (b, pl.ds((lo + t) * bkv, bkv), kvh)
        load_k(t, slot)
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], v_bar.at[slot])

      for i in range(stages):
        pl.when(i < n)(functools.partial(load, i, i))

      def body(t, carry):
        slot = lax.rem(t, stages)
        sl = (b, pl.ds((lo + t) * bkv, bkv), kvh)
        plgpu.barrier_wait(k_free.at[slot])
        load_k(t, slot)
        plgpu.barrier_wait(v_free.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], v_bar.at[slot])
        return carry
      lax.fori_loop(jnp.int32(stages), jnp.maximum(n, stages), body, None)
      _drain(n, stages, (k_free, v_free))

  tr = _smem_transforms(D, dtype)
  scratch = (
      plgpu.SMEM((2, bq, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((2, bq), jnp.float32),
      # One arrival per TMA copy signalled on the barrier: Q (+ its row ids), K (+ KV ids).
      plgpu.Barrier(num_arrivals=1 + segs, num_barriers=2),
      plgpu.Barrier(num_arrivals=1 + segs, num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2),
  )
  operands = (q, k, v)
  if segs:
    scratch = scratch + (plgpu.SMEM((2, bq), jnp.int32), plgpu.SMEM((stages, bkv), jnp.int32))
    operands = operands + (seg[0], seg[1], _q_tile_kv_table(st, seg, 2 * bq, bkv))
  out_type = (jax.ShapeDtypeStruct((st.B, st.Tp, st.N, D), dtype),
              jax.ShapeDtypeStruct((st.B, st.N, st.Tp), jnp.float32))
  grid, names = _grid(st, st.N, n_cta, "q_seq")
  return plgpu.kernel(
      kernel, out_type=out_type, scratch_types=scratch,
      grid=grid, grid_names=names,
      num_threads=3, thread_name="wg", compiler_params=_compiler_params(st.cfg),
      **_interpret_arg(st))(*operands)


# --------------------------------------------------------------------------------------------
# Backward: dQ kernel (grid over query tiles).
# --------------------------------------------------------------------------------------------
def _dq_call(st: _Static, q, k, v, do, out, lse2, dlse2=None, seg=None):
  """-> (dq, delta): delta [B, N, Tp] f32 = rowsum(do * out) - dlse2 * LOG2E, computed from
  the O / dO tiles the kernel loads anyway (no separate pass over O and dO in HBM); the dK/dV
  kernel, launched after, reads it."""
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  D, dtype, G = st.D, st.dtype, st.G
  n_cta = st.Tp // (2 * bq)
  c = st.c
  segs = st.segments
  has_dlse = dlse2 is not None
  smem = _dq_smem_bytes(cfg, D, jnp.dtype(dtype).itemsize, segs)
  if smem > _SMEM_LIMIT and not st.interpret:
    raise ValueError(f"the dQ kernel needs ~{smem} bytes of shared memory for head_dim {D} "
                     f"(limit {_SMEM_LIMIT}) with {cfg}; use fewer bwd_stages")

  def kernel(*refs):
    refs = list(refs)
    q_ref, k_ref, v_ref, do_ref, o_ref, lse_ref = refs[:6]
    del refs[:6]
    dlse_ref = refs.pop(0) if has_dlse else None
    if segs:
      qseg_ref, kvseg_ref, rng_ref = refs[:3]
      del refs[:3]
    (dq_ref, delta_ref, q_smem, do_smem, o_smem, lse_smem, delta_smem, dlse_smem, k_smem,
     v_smem, q_bar, kv_bar, kv_free) = refs[:13]
    if segs:
      qseg_smem, kvseg_smem = refs[13:]
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    ci = lax.axis_index("q_seq")
    if st.causal:
      ci = (n_cta - 1) - ci
    wg = lax.axis_index("wg")
    r0 = ci * (2 * bq)
    if segs:
      lo, flo, fhi, hi = _read_ranges(rng_ref, b, ci)
    else:
      lo, flo, fhi, hi = _kv_ranges(st, r0, 2 * bq, bkv)
    n = hi - lo

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(cfg.consumer_registers, action="increase")
      q_base = r0 + wg * bq
      qs, dos, o_s = q_smem.at[wg], do_smem.at[wg], o_smem.at[wg]
      rows_sl = (b, pl.ds(q_base, bq), h)
      vec_sl = (b, h, pl.ds(q_base, bq))
      plgpu.copy_gmem_to_smem(q_ref.at[rows_sl], qs, q_bar.at[wg])
      plgpu.copy_gmem_to_smem(do_ref.at[rows_sl], dos, q_bar.at[wg])
      plgpu.copy_gmem_to_smem(o_ref.at[rows_sl], o_s, q_bar.at[wg])
      plgpu.copy_gmem_to_smem(lse_ref.at[vec_sl], lse_smem.at[wg], q_bar.at[wg])
      if has_dlse:
        plgpu.copy_gmem_to_smem(dlse_ref.at[vec_sl], dlse_smem.at[wg], q_bar.at[wg])
      if segs:
        plgpu.copy_gmem_to_smem(qseg_ref.at[b, pl.ds(q_base, bq)], qseg_smem.at[wg],
                                q_bar.at[wg])
      plgpu.barrier_wait(q_bar.at[wg])
      lse = _load_vec(st, lse_smem.at[wg], "ROW")
      # delta before the loop, while the dQ accumulator is not live yet (register headroom).
      do_f = _load_vec(st, dos, "WGMMA").astype(jnp.float32)
      o_f = _load_vec(st, o_s, "WGMMA").astype(jnp.float32)
      dlt = jnp.sum(do_f * o_f, axis=1)
      if has_dlse:   # d lse / d s = p folds into delta (ds = p * (dp - delta + dlse))
        dlt = dlt - _load_vec(st, dlse_smem.at[wg], "ROW") * LOG2E
      # The dK/dV kernel's input; the store overlaps the loop (awaited at the end).
      delta_smem.at[wg][...] = dlt
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(delta_smem.at[wg], delta_ref.at[vec_sl])
      q_ids = _load_vec(st, qseg_smem.at[wg], "ROW") if segs else None
      dq = _cast(st, jnp.full((bq, D), 0.0, jnp.float32), "WGMMA")

      def step(j, dq, masked):
        t = j - lo
        slot = lax.rem(t, stages)
        plgpu.barrier_wait(kv_bar.at[slot])
        if masked and segs:
          kv_ids = _load_vec(st, kvseg_smem.at[slot], "COL")

        s, dp = _dots_nt(st, [(qs, k_smem.at[slot]), (dos, v_smem.at[slot])])
        p = jnp.exp2(s * c - lax.broadcast_in_dim(lse, s.shape, [0]))
        if masked:
          rows = _iota(st, (bq, bkv), 0)
          cols = _iota(st, (bq, bkv), 1)
          kv_idx = cols + j * bkv
          keep = _keep(st, rows + (st.q_off + q_base), kv_idx + st.kv_off, kv_idx)
          if segs:
            keep = _and(keep, _seg_keep(q_ids, kv_ids, (bq, bkv), 0))
          if keep is not None:
            p = jnp.where(keep, p, 0.0)
        ds = p * (dp - lax.broadcast_in_dim(dlt, dp.shape, [0]))

        dq, = _mma_acc(st, (dq,), [(ds.astype(dtype), k_smem.at[slot])])
        plgpu.barrier_arrive(kv_free.at[slot])
        return dq

      dq = _loop3(lo, flo, fhi, hi, step, dq)
      qs[...] = (dq * st.scale).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qs, dq_ref.at[rows_sl])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(cfg.producer_registers, action="decrease")
      kvh = lax.div(h, jnp.asarray(G, h.dtype))

      def load(t, slot):
        sl = (b, pl.ds((lo + t) * bkv, bkv), kvh)
        plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[slot], kv_bar.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], kv_bar.at[slot])
        if segs:
          plgpu.copy_gmem_to_smem(kvseg_ref.at[b, pl.ds((lo + t) * bkv, bkv)],
                                  kvseg_smem.at[slot], kv_bar.at[slot])

      for i in range(stages):
        pl.when(i < n)(functools.partial(load, i, i))

      def body(t, carry):
        slot = lax.rem(t, stages)
        plgpu.barrier_wait(kv_free.at[slot])
        load(t, slot)
        return carry
      lax.fori_loop(jnp.int32(stages), jnp.maximum(n, stages), body, None)
      _drain(n, stages, (kv_free,))

  tr = _smem_transforms(D, dtype)
  scratch = (
      plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # Q, then dQ for the output copy
      plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # dO
      plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # O
      plgpu.SMEM((2, bq), jnp.float32),                 # lse
      plgpu.SMEM((2, bq), jnp.float32),                 # delta (output staging)
      plgpu.SMEM((2, bq), jnp.float32),                 # dlse (unused without it)
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      # One arrival per TMA copy: Q, dO, O, lse (+ dlse) (+ row ids).
      plgpu.Barrier(num_arrivals=4 + has_dlse + segs, num_barriers=2),
      plgpu.Barrier(num_arrivals=2 + segs, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
  )
  # O may come as f32 (residual VJP): the kernel stages it in q's dtype, as the forward wrote it.
  operands = (q, k, v, do, out.astype(dtype), lse2)
  if has_dlse:
    operands = operands + (dlse2.astype(jnp.float32),)
  if segs:
    scratch = scratch + (plgpu.SMEM((2, bq), jnp.int32), plgpu.SMEM((stages, bkv), jnp.int32))
    operands = operands + (seg[0], seg[1], _q_tile_kv_table(st, seg, 2 * bq, bkv))
  out_type = (jax.ShapeDtypeStruct((st.B, st.Tp, st.N, D), dtype),
              jax.ShapeDtypeStruct((st.B, st.N, st.Tp), jnp.float32))
  grid, names = _grid(st, st.N, n_cta, "q_seq")
  return plgpu.kernel(
      kernel, out_type=out_type, scratch_types=scratch, grid=grid, grid_names=names,
      num_threads=3, thread_name="wg", compiler_params=_compiler_params(st.cfg),
      **_interpret_arg(st))(*operands)


# --------------------------------------------------------------------------------------------
# Backward: dK/dV kernel (grid over KV tiles; loops over the GQA group's query heads).
# --------------------------------------------------------------------------------------------
def _dkv_call(st: _Static, q, k, v, do, lse2, delta, fused: bool = False, seg=None):
  """dK, dV (and with `fused`, dQ too: returns (dk, dv, dq)).

  fused: each step also computes dQ_blk = dS @ K for the query block: both consumers store
  their dS^T tile (bf16, double-buffered) into SMEM, meet at a pair barrier while their dV/dK
  products run, and each computes half of dQ_blk's
  columns from both tiles (wgmma with a transposed A from SMEM), then adds it into an f32
  accumulator in GMEM with a TMA reduce-add. 5 matrix products per block pair instead of the
  7 of the two-kernel backward (no recomputation of S and dP in a dQ kernel).
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  D, dtype, G = st.D, st.dtype, st.G
  n_cta = st.Sp // (2 * bkv)
  c = st.c

  dq_cols = D // 2 if D >= 128 else D   # dQ columns computed by each consumer (D <= 128)
  segs = st.segments
  if segs and fused:
    raise NotImplementedError("the fused backward does not take segment ids")

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest):
    if fused:
      (dqacc_ref, dk_ref, dv_ref, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
       kv_bar, in_bar, in_free, ds_smem, dq_smem, pair) = rest
    elif segs:
      (qseg_ref, kvseg_ref, rng_ref, dk_ref, dv_ref, k_smem, v_smem, q_smem, do_smem,
       lse_smem, delta_smem, kv_bar, in_bar, in_free, kvseg_smem, qseg_smem) = rest
    else:
      (dk_ref, dv_ref, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
       kv_bar, in_bar, in_free) = rest
    b = lax.axis_index("batch")
    kvh = lax.axis_index("heads")
    ci = lax.axis_index("kv_seq")
    wg = lax.axis_index("wg")
    c0 = ci * (2 * bkv)
    if segs:   # query block ranges of this KV tile, precomputed (see _seg_block_ranges)
      lo, flo, fhi, hi = _read_ranges(rng_ref, b, ci)
    else:
      lo, flo, fhi, hi = _q_ranges(st, c0, 2 * bkv, bq)
    n = hi - lo

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(cfg.consumer_registers, action="increase")
      kv_base = c0 + wg * bkv
      ks, vs = k_smem.at[wg], v_smem.at[wg]
      sl = (b, pl.ds(kv_base, bkv), kvh)
      plgpu.copy_gmem_to_smem(k_ref.at[sl], ks, kv_bar.at[wg])
      plgpu.copy_gmem_to_smem(v_ref.at[sl], vs, kv_bar.at[wg])
      if segs:
        plgpu.copy_gmem_to_smem(kvseg_ref.at[b, pl.ds(kv_base, bkv)], kvseg_smem.at[wg],
                                kv_bar.at[wg])
      plgpu.barrier_wait(kv_bar.at[wg])
      # Rows of the transposed tiles (S^T, dP^T: [bkv, bq]) are this consumer's keys.
      kv_ids = _load_vec(st, kvseg_smem.at[wg], "ROW") if segs else None
      zeros = _cast(st, jnp.full((bkv, D), 0.0, jnp.float32), "WGMMA")

      def head(g, carry):
        def step(i, carry, masked):
          dk, dv = carry
          t = g * n + (i - lo)
          slot = lax.rem(t, stages)
          plgpu.barrier_wait(in_bar.at[slot])
          if masked and segs:   # columns: the query block's ids (read before in_free)
            q_ids = _load_vec(st, qseg_smem.at[slot], "COL")

          sT, dpT = _dots_nt(st, [(ks, q_smem.at[slot]), (vs, do_smem.at[slot])])
          lse = _load_vec(st, lse_smem.at[slot], "COL")
          dlt = _load_vec(st, delta_smem.at[slot], "COL")
          pT = jnp.exp2(sT * c - lax.broadcast_in_dim(lse, sT.shape, [1]))
          if masked:
            rows = _iota(st, (bkv, bq), 0)
            cols = _iota(st, (bkv, bq), 1)
            keep = _keep(st, cols + (st.q_off + i * bq), rows + (st.kv_off + kv_base))
            if segs:
              keep = _and(keep, _seg_keep(q_ids, kv_ids, (bkv, bq), 1))
            if keep is not None:
              pT = jnp.where(keep, pT, 0.0)
          dsT = pT * (dpT - lax.broadcast_in_dim(dlt, dpT.shape, [1]))
          ds16 = dsT.astype(dtype)
          if fused:
            par = lax.rem(t, 2)    # dS^T tiles are double-buffered by step parity
            ds_smem.at[par, wg][...] = ds16
            plgpu.commit_smem()
            plgpu.barrier_arrive(pair)          # my dS^T tile is in SMEM

          dv, dk = _mma_acc(st, (dv, dk), [(pT.astype(dtype), do_smem.at[slot]),
                                           (ds16, q_smem.at[slot])])
          plgpu.barrier_arrive(in_free.at[slot])
          if fused:
            plgpu.barrier_wait(pair)            # both dS^T tiles are in SMEM
            h = kvh * G + g

            def dq_part(w):   # consumer w computes dQ columns [w*dq_cols, (w+1)*dq_cols)
              col0 = w * dq_cols

              def dq_fn(acc_ref):
                for u in range(2):
                  kb = k_smem.at[u]
                  if dq_cols != D:
                    kb = kb.at[:, pl.ds(col0, dq_cols)]
                  plgpu.wgmma(acc_ref, plgpu.transpose_ref(ds_smem.at[par, u], (1, 0)), kb)
                return acc_ref[...]
              dq = pl.run_scoped(dq_fn, plgpu.ACC((bq, dq_cols), jnp.float32))
              plgpu.wait_smem_to_gmem(0, wait_read_only=True)   # previous reduce read dq_smem
              dq_smem.at[w][...] = dq
              plgpu.commit_smem()
              plgpu.copy_smem_to_gmem(
                  dq_smem.at[w],
                  dqacc_ref.at[b, pl.ds(i * bq, bq), h, pl.ds(col0, dq_cols)],
                  reduction_op="add")
            for w in range(D // dq_cols):   # static column offsets
              pl.when(wg == w)(functools.partial(dq_part, w))
            # No second meeting: the tiles of this parity are rewritten at step t + 2, after
            # both consumers have passed step t + 1's meeting, i.e. finished this dq product.
          return dk, dv
        return _loop3(lo, flo, fhi, hi, step, carry)

      if G == 1:
        dk, dv = head(0, (zeros, zeros))
      else:
        dk, dv = lax.fori_loop(0, G, head, (zeros, zeros))
      if fused:
        # The other consumer's last dQ product reads my K tile: meet before it becomes dK.
        plgpu.barrier_arrive(pair)
        plgpu.barrier_wait(pair)
      ks[...] = (dk * st.scale).astype(dtype)
      vs[...] = dv.astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(ks, dk_ref.at[sl])
      plgpu.copy_smem_to_gmem(vs, dv_ref.at[sl])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(cfg.producer_registers, action="decrease")
      n1 = jnp.maximum(n, 1)

      def load(t, slot):
        g = lax.div(t, n1)
        i = lo + lax.rem(t, n1)
        h = kvh * G + g
        rows = (b, pl.ds(i * bq, bq), h)
        vec = (b, h, pl.ds(i * bq, bq))
        plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], in_bar.at[slot])
        plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], in_bar.at[slot])
        plgpu.copy_gmem_to_smem(lse_ref.at[vec], lse_smem.at[slot], in_bar.at[slot])
        plgpu.copy_gmem_to_smem(delta_ref.at[vec], delta_smem.at[slot], in_bar.at[slot])
        if segs:
          plgpu.copy_gmem_to_smem(qseg_ref.at[b, pl.ds(i * bq, bq)], qseg_smem.at[slot],
                                  in_bar.at[slot])

      total = n * G
      for i in range(stages):
        pl.when(i < total)(functools.partial(load, i, i))

      def body(t, carry):
        slot = lax.rem(t, stages)
        plgpu.barrier_wait(in_free.at[slot])
        load(t, slot)
        return carry
      lax.fori_loop(jnp.int32(stages), jnp.maximum(total, stages), body, None)
      _drain(total, stages, (in_free,))

  tr = _smem_transforms(D, dtype)
  scratch = (
      plgpu.SMEM((2, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((2, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq), jnp.float32),
      plgpu.SMEM((stages, bq), jnp.float32),
      plgpu.Barrier(num_arrivals=2 + segs, num_barriers=2),   # one arrival per TMA copy
      plgpu.Barrier(num_arrivals=4 + segs, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
  )
  kv_type = jax.ShapeDtypeStruct((st.B, st.Sp, st.K, D), dtype)
  grid, names = _grid(st, st.K, n_cta, "kv_seq")
  if not fused:
    operands = (q, k, v, do, lse2, delta)
    if segs:
      scratch = scratch + (plgpu.SMEM((2, bkv), jnp.int32), plgpu.SMEM((stages, bq), jnp.int32))
      operands = operands + (seg[0], seg[1], _kv_tile_q_table(st, seg, 2 * bkv, bq))
    return plgpu.kernel(
        kernel, out_type=(kv_type, kv_type), scratch_types=scratch, grid=grid,
        grid_names=names, num_threads=3, thread_name="wg",
        compiler_params=_compiler_params(st.cfg), **_interpret_arg(st))(*operands)
  if st.interpret:
    raise NotImplementedError("the fused backward (TMA reduce-add) does not run in interpret "
                              "mode")
  scratch = scratch + (
      plgpu.SMEM((2, 2, bkv, bq), dtype, transforms=_smem_transforms(bq, dtype)),
      plgpu.SMEM((2, bq, dq_cols), jnp.float32),
      plgpu.Barrier(num_arrivals=2),
  )
  dq_acc = jax.new_ref(jnp.zeros((st.B, st.Tp, st.N, D), jnp.float32))
  dk, dv = _kernel_with_ref(kernel, (q, k, v, do, lse2, delta, dq_acc), (kv_type, kv_type),
                            scratch, grid, names, st.cfg)
  return dk, dv, jax.freeze(dq_acc)


def _kernel_with_ref(body, operands, out_type, scratch, grid, names, cfg=None):
  """plgpu.kernel for a body that also gets a mutable `jax.Ref` operand (aliased in and out).

  plgpu.kernel's custom_vmap wrapper does not accept Refs, so this goes one level down, to
  `pl.kernel` over a `plgpu.Mesh` (what plgpu.kernel itself calls).
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]

  def kernel_body(*refs):
    pl.run_scoped(functools.partial(body, *refs), *scratch, collective_axes="wg")
  mesh = plgpu.Mesh(grid=grid, grid_names=names, num_threads=3, thread_name="wg")
  return pl.kernel(kernel_body, out_type=out_type, mesh=mesh,
                   compiler_params=_compiler_params(cfg))(*operands)


def _grid(st: _Static, heads: int, tiles: int, tile_name: str):
  """(grid, names): heads fastest (default) or tiles fastest (`cfg.tiles_fastest`)."""
  if st.cfg.tiles_fastest:
    return (tiles, heads, st.B), (tile_name, "heads", "batch")
  return (heads, tiles, st.B), ("heads", tile_name, "batch")


# --------------------------------------------------------------------------------------------
# custom_vjp core on padded arrays. Outputs (out [B,Tp,N,D], lse2 [B,N,Tp] base-2 units).
# --------------------------------------------------------------------------------------------
# `seg` is None or (q_seg [B, Tp], kv_seg [B, Sp]) int32: a primal input (it may be traced) with
# no cotangent (`None` in the backward's output).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _core(st: _Static, bwd: str, q, k, v, seg):
  return _fwd_call(st, q, k, v, seg)


def _core_fwd(st, bwd, q, k, v, seg):
  out, lse2 = _fwd_call(st, q, k, v, seg)
  return (out, lse2), (q, k, v, seg, out, lse2)


def _core_bwd(st, bwd, res, cts):
  return _core_bwd_impl(st, bwd, res, cts) + (None,)


def _core_bwd_impl(st, bwd, res, cts):
  q, k, v, seg, out, lse2 = res
  do, dlse2 = cts
  do = do.astype(q.dtype)
  # Rows with no kept key: lse = -inf would give p = exp2(s + inf); +inf gives p = 0.
  lse_b = jnp.where(lse2 == _NEG_INF, jnp.inf, lse2)
  if bwd == "mosaic":
    # The dQ kernel computes delta from the O / dO tiles it loads, so it runs first.
    dq, delta = _dq_call(st, q, k, v, do, out, lse_b, dlse2, seg=seg)
    dk, dv = _dkv_call(st, q, k, v, do, lse_b, delta, seg=seg)
    return dq, dk, dv
  delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
  if dlse2 is not None:
    # d lse / d s = p: folds into delta (ds = p * (dp - delta + dlse)); lse2 = lse * log2(e).
    delta = delta - dlse2.astype(jnp.float32) * LOG2E
  if bwd == "fused":
    dk, dv, dq_acc = _dkv_call(st, q, k, v, do, lse_b, delta, fused=True)
    return (dq_acc * st.scale).astype(q.dtype), dk, dv
  # "xla": a blocked jnp recomputation with the same masking (correct, not fast).
  return _bwd_xla(st, q, k, v, do, lse_b, delta, seg)


_core.defvjp(_core_fwd, _core_bwd)


def _bwd_xla(st: _Static, q, k, v, do, lse_b, delta, seg=None):
  """Dense jnp backward from the kernel's residuals (fallback; materializes [B,N,T,S])."""
  B, Tp, N, D = q.shape
  Sp, K, G = k.shape[1], k.shape[2], st.G
  hp = lax.Precision.HIGHEST
  qf = q.astype(jnp.float32).reshape(B, Tp, K, G, D)
  kf, vf = k.astype(jnp.float32), v.astype(jnp.float32)
  dof = do.astype(jnp.float32).reshape(B, Tp, K, G, D)
  s = jnp.einsum("btkgd,bskd->bkgts", qf, kf, precision=hp)
  lse = lse_b.reshape(B, K, G, Tp)[..., None]
  p = jnp.exp2(s * st.c - lse)
  q_pos = st.q_off + jnp.arange(Tp, dtype=jnp.int32)[:, None]
  kv_idx = jnp.arange(Sp, dtype=jnp.int32)[None, :]
  keep = _keep(st, q_pos, kv_idx + st.kv_off, kv_idx)
  if keep is None:
    keep = kv_idx < st.S
  else:
    keep = keep & (kv_idx < st.S)
  if seg is not None:   # [B, 1, 1, Tp, Sp] against p's [B, K, G, Tp, Sp]
    keep = keep & (seg[0][:, None, None, :, None] == seg[1][:, None, None, None, :])
  p = jnp.where(keep, p, 0.0)
  dp = jnp.einsum("btkgd,bskd->bkgts", dof, vf, precision=hp)
  ds = p * (dp - delta.reshape(B, K, G, Tp)[..., None])
  dq = jnp.einsum("bkgts,bskd->btkgd", ds, kf, precision=hp) * st.scale
  dk = jnp.einsum("bkgts,btkgd->bskd", ds, qf, precision=hp) * st.scale
  dv = jnp.einsum("bkgts,btkgd->bskd", p, dof, precision=hp)
  return (dq.reshape(B, Tp, N, D).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------
_SMEM_LIMIT = 232448   # H100 dynamic shared memory per block (bytes)


def _fwd_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, segments: bool = False) -> int:
  """Forward kernel SMEM: Q (2 consumers) + K/V ring + lse + Mosaic scratch + ~1 KiB slack
  (+ the int32 segment ids of the Q tiles and of the K ring)."""
  buffers = (2 * cfg.block_q + 2 * cfg.stages * cfg.block_kv) * D * itemsize
  scratch = 2048 if cfg.reduction_scratch_bytes is None else cfg.reduction_scratch_bytes
  seg = (2 * cfg.block_q + cfg.stages * cfg.block_kv) * 4 if segments else 0
  return buffers + 2 * cfg.block_q * 4 + scratch + 1024 + seg


def _dq_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, segments: bool = False) -> int:
  """dQ kernel SMEM (the backward's largest): Q, dO, O (2 consumers) + K/V ring + lse, delta,
  dlse + Mosaic scratch + ~1 KiB slack (+ the int32 ids of the Q tiles and of the K ring)."""
  bq, bkv = cfg.bwd_block_q, cfg.bwd_block_kv
  buffers = (3 * 2 * bq + 2 * cfg.bwd_stages * bkv) * D * itemsize
  scratch = 2048 if cfg.reduction_scratch_bytes is None else cfg.reduction_scratch_bytes
  seg = (2 * bq + cfg.bwd_stages * bkv) * 4 if segments else 0
  return buffers + 3 * 2 * bq * 4 + scratch + 1024 + seg


def _static_int(x, name):
  if isinstance(x, bool) or not isinstance(x, int):
    try:
      import numpy as np  # pylint: disable=g-import-not-at-top
      if isinstance(x, np.integer):
        return int(x)
    except ImportError:  # pragma: no cover
      pass
    raise TypeError(f"{name} must be a static Python int for the Hopper kernel, got "
                    f"{type(x).__name__}")
  return x


def _normalize_segment_ids(segment_ids, B: int, T: int, S: int):
  """None, or (q_ids [B, T], kv_ids [B, S]) int32."""
  if segment_ids is None:
    return None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("segment_ids must be a [B, T] array or a (q_ids, kv_ids) pair")
    q_ids, kv_ids = segment_ids
  else:
    q_ids = kv_ids = segment_ids
  q_ids, kv_ids = jnp.asarray(q_ids), jnp.asarray(kv_ids)
  if q_ids.shape != (B, T) or kv_ids.shape != (B, S):
    raise ValueError(f"segment_ids must be [B, T] = {(B, T)} and [B, S] = {(B, S)}, got "
                     f"{q_ids.shape}, {kv_ids.shape}")
  if not (jnp.issubdtype(q_ids.dtype, jnp.integer) and jnp.issubdtype(kv_ids.dtype, jnp.integer)):
    raise TypeError("segment_ids must be integer arrays")
  return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)


def hopper_attention(q, k, v, *, scale: float | None = None, is_causal: bool = False,
                     q_offset: int = 0, kv_offset: int = 0,
                     sliding_window: tuple[int | None, int | None] | None = None,
                     segment_ids=None, return_lse: bool = False,
                     config: HopperConfig | None = None, backward: str | None = None,
                     interpret: bool = False):
  """Flash attention on Hopper (Mosaic GPU): q [B,T,N,D], k/v [B,S,K,D] -> out [B,T,N,D].

  `segment_ids`: None, a [B, T] integer array (T == S) or a pair (q_ids [B, T], kv_ids [B, S]);
  row i attends to column j only if q_ids[b, i] == kv_ids[b, j] (documents / packed sequences;
  ids may be traced). KV blocks whose id range cannot meet a tile's are skipped, blocks inside
  one document (and below the causal diagonal) run unmasked; see `_seg_block_ranges`.

  `backward`: "mosaic" (the dQ and dK/dV kernels; head dims <= 128), "fused" (one dK/dV kernel
  that also accumulates dQ with TMA reduce-adds; head dims <= 128; GPU only) or "xla" (a dense jnp
  recomputation from the kernel's residuals: correct, not fast). Default: "mosaic" where it
  applies, else "xla". `interpret=True` runs the kernels in Mosaic GPU interpret mode (CPU).
  Returns `out`, or `(out, lse [B,N,T] float32)` with `return_lse`.
  """
  st, backward, (qp, kp, vp, seg), pad = _prepare(
      q, k, v, scale=scale, is_causal=is_causal, q_offset=q_offset, kv_offset=kv_offset,
      sliding_window=sliding_window, segment_ids=segment_ids, config=config,
      backward=backward, interpret=interpret)
  out, lse2 = _core(st, backward, qp, kp, vp, seg)
  out = out[:, :st.T, :, :q.shape[-1]]
  if not return_lse:
    return out
  return out, lse2[:, :, :st.T] * LN2


def hopper_attention_residual_vjp(q, k, v, out, lse, dout, dlse=None, **kwargs):
  """(dq, dk, dv) of `hopper_attention(q, k, v, return_lse=True, **kwargs)` from residuals
  `out [B,T,N,D]`, `lse [B,N,T]` and cotangents `dout`, `dlse`, by the same backward kernels,
  without the forward. The kernels use the residuals only through p = exp(s - lse) and
  delta = rowsum(dout * out) - dlse, so `(out, lse)` may be the merged result of a larger
  softmax this call is a part of (ring attention)."""
  st, backward, (qp, kp, vp, seg), pad = _prepare(q, k, v, **kwargs)
  T, S, D0 = st.T, st.S, q.shape[-1]
  # Padded rows: lse -inf (p = 0 there), out / dout zero.
  lse2 = jnp.pad(lse.astype(jnp.float32) * LOG2E, ((0, 0), (0, 0), (0, st.Tp - T)),
                 constant_values=_NEG_INF)
  dlse2 = None if dlse is None else jnp.pad(dlse.astype(jnp.float32) * LN2,
                                            ((0, 0), (0, 0), (0, st.Tp - T)))
  res = (qp, kp, vp, seg, pad(out.astype(jnp.float32), T, st.Tp), lse2)
  dq, dk, dv = _core_bwd_impl(st, backward, res, (pad(dout.astype(q.dtype), T, st.Tp), dlse2))
  return dq[:, :T, :, :D0], dk[:, :S, :, :D0], dv[:, :S, :, :D0]


def _prepare(q, k, v, *, scale=None, is_causal=False, q_offset=0, kv_offset=0,
             sliding_window=None, segment_ids=None, config=None, backward=None,
             interpret=False):
  """Checks a call and builds its `_Static`, the backward mode and the padded (q, k, v,
  segment ids); also returns the padding function `pad(x, L, Lp)` for [B, L, N, D] arrays."""
  B, T, N, D0 = q.shape
  S, K = k.shape[1], k.shape[2]
  if k.shape != (B, S, K, D0) or v.shape != (B, S, K, D0):
    raise ValueError(f"k and v must be [B, S, K, {D0}], got {k.shape}, {v.shape}")
  if N % K:
    raise ValueError(f"K={K} must divide N={N}")
  reason = supported(D0, q.dtype)
  if reason:
    raise NotImplementedError(reason)
  if not (q.dtype == k.dtype == v.dtype):
    raise TypeError("q, k, v must share a dtype")
  q_off = _static_int(q_offset, "q_offset")
  kv_off = _static_int(kv_offset, "kv_offset")
  left = right = None
  if sliding_window is not None:
    if isinstance(sliding_window, int):
      sliding_window = (sliding_window, sliding_window)
    left, right = sliding_window
  seg_ids = _normalize_segment_ids(segment_ids, B, T, S)
  D = _padded_head_dim(D0)
  cfg = config or default_config(D0)
  smem = _fwd_smem_bytes(cfg, D, jnp.dtype(q.dtype).itemsize, seg_ids is not None)
  if smem > _SMEM_LIMIT:
    raise ValueError(f"{cfg} needs ~{smem} bytes of shared memory for head_dim {D} (limit "
                     f"{_SMEM_LIMIT}); use fewer stages, a smaller block_kv or a smaller "
                     "reduction_scratch_bytes")
  if scale is None:
    scale = 1.0 / math.sqrt(D0)
  if backward is None:
    backward = "mosaic" if bwd_kernel_supports(D0) else "xla"
  if backward in ("mosaic", "fused") and not bwd_kernel_supports(D0):
    raise NotImplementedError(f"the Mosaic backward supports head_dim <= 128, got {D0}")
  if backward not in ("mosaic", "fused", "xla"):
    raise ValueError(f"backward must be 'mosaic', 'fused' or 'xla', got {backward!r}")
  if backward == "fused" and seg_ids is not None:
    raise NotImplementedError("backward='fused' does not take segment_ids; use 'mosaic'")
  tq = 2 * max(cfg.block_q, cfg.bwd_block_q)
  tkv = math.lcm(cfg.block_kv, 2 * cfg.bwd_block_kv, cfg.bwd_block_kv)
  Tp = -(-T // tq) * tq
  Sp = -(-S // tkv) * tkv
  st = _Static(B=B, T=T, S=S, Tp=Tp, Sp=Sp, N=N, K=K, D=D, dtype=jnp.dtype(q.dtype),
               scale=float(scale), causal=bool(is_causal), q_off=q_off, kv_off=kv_off,
               left=left, right=right, cfg=cfg, interpret=bool(interpret),
               segments=seg_ids is not None)

  def pad(x, L, Lp):
    if L == Lp and D == D0:
      return x
    return jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, D - D0)))

  def pad_ids(x, L, Lp):
    # Edge padding: the padded rows / columns repeat the last real id, so they change no
    # tile's [min, max] id range (padded keys are masked by index, padded rows discarded).
    return x if L == Lp else jnp.pad(x, ((0, 0), (0, Lp - L)), mode="edge")
  seg = None if seg_ids is None else (pad_ids(seg_ids[0], T, Tp), pad_ids(seg_ids[1], S, Sp))
  return st, backward, (pad(q, T, Tp), pad(k, S, Sp), pad(v, S, Sp), seg), pad
