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
* overlapped softmax (`HopperConfig(overlap_softmax=True)`, default for dense / causal calls
  from kv length 2048 and for persistent calls, head_dim <= 128): within a consumer, step t
  issues S_t = Q K_t^T and P_{t-1} V_{t-1} together and runs the softmax of S_t while the P V
  product is in flight (FA3's intra-warpgroup overlap). Its defaults run without the
  consumers' ping-pong (`schedule_barrier=False`: the two consumers do as well or better
  running free there, NOTES.md Hopper v11). See `overlapped_walk` in `_fwd_call`. Where a
  consumer's last block has a half that is all masked for its 64 rows (a causal diagonal),
  that step covers the other 64 keys only (`fwd_half_steps`, in the same defaults; NOTES.md
  Hopper v27).
* persistent forward (`HopperConfig(persistent=True)`, default for short dense calls only:
  see `default_config`): a 1-D grid of one CTA per SM, each looping over (head, q tile, batch) work items; the K/V
  ring, the producer and the ping-pong carry on across tiles, Q is double-buffered and
  prefetched one tile ahead, O / lse stores are not awaited before the next tile. Removes the
  per-tile fixed cost (Q load, ring fill, store wait). See `_fwd_call`.
* the KV loop of a CTA runs over [lo, hi) blocks only (causal / window ranges computed from
  static offsets), in three sections: masked blocks before, unmasked ("full") blocks, masked
  blocks after. Full blocks run no mask arithmetic at all.
* segment ids (documents): the same three sections, with bounds that depend on the ids. They
  are computed outside the kernel (jnp, from per-tile / per-block min and max ids, intersected
  with the static ranges) into an int32 table [B, tiles, 4] that each warpgroup reads as four
  scalars; the ids of a tile's rows and of each streamed block travel by TMA next to Q / K
  (same barriers) into small SMEM buffers and are loaded as WGMMA row / column vectors, so a
  partial block's mask is one broadcast compare. See `_seg_block_ranges`.
* block_sparsity (`BlockSparsity` lists built with 128 x 128 blocks = one CTA's rows): a CTA
  walks its row of the lists instead of a range - the partial blocks (mask_fn evaluated on the
  tile, with the per-token side arrays streamed by TMA like the segment ids), then the full
  ones (no mask); producer and consumers derive the same step -> (block, ring slot) sequence
  from list entries read as GMEM scalars. See `_list_walk`, `_tile_keep`.
* backward: dK/dV kernel (grid over KV tiles; the producer streams Q, dO, lse, delta blocks
  of every query head of the GQA group, so dK/dV of a KV head are accumulated in registers and
  never reduced afterwards) and a dQ kernel (grid over query tiles, as the forward). Both
  recompute P from the forward's log-sum-exp (base 2). Masked and unmasked sections as above.
  The dQ kernel runs first: it also loads the O tile next to dO and writes
  delta = rowsum(dO * O) - dlse for the dK/dV kernel (no separate XLA pass over O and dO).
  `backward="fused"` instead accumulates dQ inside the dK/dV kernel with f32 TMA reduce-adds
  (5 matrix products instead of 7; segment ids too, from the same range table as the dK/dV
  kernel's); the default wherever it applies (`default_backward`: not block_sparsity).
* persistent dQ kernel (`HopperConfig(bwd_persistent=True)`, off by default: measured no gain
  on the H100): as the persistent forward - one CTA per SM looping over the (head, q
  tile, batch) work items, the K/V ring and the producer carried across tiles, Q and dO
  double-buffered, the next tile's inputs loaded during the current tile's first KV step,
  delta / dQ stores not awaited before the next tile. See `_dq_call`.
* persistent dK/dV kernel (`HopperConfig(dkv_persistent=True)`; the default for causal calls
  of up to 1024 keys and queries, sixteenth session): one CTA per SM looping over the (b, KV
  head, KV tile) work items, the Q / dO ring carried across items, K / V double-buffered, the
  next item's K / V loaded during the current one. With `persistent_dynamic` the persistent
  kernels take their items from a global atomic counter (FA3's scheduler). See `_dkv_call`,
  `_persistent_schedule`.
* persistent fused backward (`HopperConfig(fused_persistent=True)`; the default for dense
  calls of up to 1024 keys and queries, seventeenth session): the same item loop with one
  K / V buffer, reloaded after each item's final meeting; dK / dV leave through the dS^T
  tiles. See `_dkv_call`.
* vmap: the kernels launched with a Ref (the dynamic scheduler's counter) run once per
  element; the fused backward folds the mapped axis into the batch (`_batch_folded`).

Semantics follow docs/ARCHITECTURE.md for the features this kernel has: causal with static
offsets (absolute positions `q_offset + i`, `kv_offset + j`), sliding window (left, right),
segment ids (row i meets column j iff q_ids[b, i] == kv_ids[b, j]), GQA, `return_lse`
(natural-log lse [B, N, T] float32, differentiable), any T and S (padded to tile multiples
inside; padded keys are masked), head dims 64..256 (multiples of 64 natively, others
zero-padded), block_sparsity + mask_fn (flash_attention's semantics; not with causal, window
or segment ids; the mask function is re-evaluated with `not` of booleans rewritten, see
`_without_not`). Fully masked rows give out = 0, lse = -inf and zero gradients.
Dtypes bf16 and f16.

Entry point: `hopper_attention(q, k, v, ...)`; reference: `hopper_reference.hopper_attention_reference`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.extend as jax_extend
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
  # For the dynamic scheduler's atomic (`_item_fetcher`), an inline Mosaic GPU body.
  from jax.experimental.mosaic.gpu import utils as mgpu_utils  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir.dialects import arith, llvm, memref  # pylint: disable=g-import-not-at-top
  # For the kernels launched with a Ref operand (`_without_refs`).
  from jax._src import core as jax_core  # pylint: disable=g-import-not-at-top
  from jax._src.state.discharge import discharge_state  # pylint: disable=g-import-not-at-top
  return dict(pl=pl, plgpu=plgpu, WGMMA=L.WGMMA, ROW=row, COL=col, InterpretParams=interp,
              mgpu_utils=mgpu_utils, ir=ir, arith=arith, llvm=llvm, memref=memref,
              discharge_state=discharge_state, eval_jaxpr=jax_core.eval_jaxpr)


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
  consumer_registers: int = 232   # 2*232 + 40 <= 504: the CTA launches at 168 x 384
  producer_registers: int = 40
  # The fused backward's own (consumer, producer) register split: its consumers hold dK, dV,
  # S^T / dP^T and (masked steps) the mask's index and id vectors; at 232 / 40 its documents
  # kernel spilled 144 bytes, at 240 / 24 none, fwd+bwd +6% (fourteenth session, NOTES.md
  # Hopper v17). The forward and the two-kernel backward use the two fields above.
  fused_registers: tuple = (240, 24)
  # forward: persistent CTAs. A 1-D grid of `persistent_ctas` CTAs (default: the GPU's SM
  # count, 132 where it cannot be read) each loops over the (head, q tile, batch) work items
  # cta, cta + n_ctas, ... (`_fwd_work_item`'s order), so that the K/V ring, the
  # ping-pong and the producer run on across tiles: the next tile's K/V stream in while the
  # consumers finish the current one, its Q is prefetched into a second Q buffer, and the
  # O / lse stores are not awaited before the next tile. Costs a second Q buffer (2*64*D*2
  # bytes); where that overflows shared memory (the default D=256 config) the forward runs
  # non-persistent instead (`_fwd_persistent`). The backward kernels ignore `persistent`
  # (the dQ kernel has its own switch, `bwd_persistent`, below).
  persistent: bool = False
  persistent_ctas: int | None = None   # persistent / bwd_ / dkv_persistent; capped at items
  # persistent: the consumers' extra ping-pong round per tile (True) or once per CTA (False);
  # both keep the schedule barrier's phases balanced (see `_fwd_call`); to be A/B-timed.
  persistent_sync_per_tile: bool = True
  # persistent forward, dQ and dK/dV kernels (`persistent`, `bwd_persistent`,
  # `dkv_persistent`): where each CTA's next work item comes from. False: the static split
  # above (cta, cta + n_ctas, ...). True: FA3's dynamic scheduler - the first item is `cta`,
  # each next one is taken by the CTA's producer from a global int32 counter with an atomic
  # add (one item ahead, handed to the consumers through shared memory), so a CTA that drew
  # short tiles takes more of them and no SM idles at the end while another still has a
  # queue (NOTES.md Hopper v13). Items are taken in the same order as the static split hands
  # them out. Interpret mode has no atomics: there the producer hands out the static split's
  # items through the same shared-memory protocol.
  persistent_dynamic: bool = False
  # backward: the dQ kernel persistent (off by default: no gain on the H100, NOTES.md v6):
  # a 1-D grid of `persistent_ctas` CTAs (shared with the forward; default one per SM) looping
  # over the dQ work items (the forward's order), the K/V ring and the producer carried across
  # tiles, Q and dO double-buffered and the next tile's loads (Q, dO, O, lse, dlse, row side
  # values) issued during the current tile, the delta and dQ stores not awaited before the
  # next tile (see `_dq_call`). Applies to the dQ kernel only: the dK/dV kernel has its own
  # switch (`dkv_persistent`); a call that runs the "fused" / "xla" backward (named, or fallen
  # back to: head_dim > 128) refuses it (with none named, the default is then "mosaic" up to
  # head_dim 128). Where its buffers do not fit in shared memory (`_dq_persistent`: e.g.
  # block-sparse side arrays at D=128) the dQ kernel runs non-persistent. Independent of
  # `persistent` (the forward's).
  bwd_persistent: bool = False
  # backward: the dK/dV kernel persistent (`persistent_ctas` CTAs, one per SM by default, over
  # its (b, KV head, KV tile) work items; with `persistent_dynamic` from the dynamic
  # scheduler): the Q / dO ring and the producer carried across items, K / V double-buffered
  # and the next item's K / V loaded during the current one, the dK / dV stores not awaited
  # before the next item (see `_dkv_call`). Not for the fused / XLA backward (refused, as
  # `bwd_persistent`). Where its buffers do not fit in shared memory (`_dkv_persistent`) the
  # kernel runs non-persistent. Twelfth session (NOTES.md Hopper v14, before v16's per-step
  # descriptors): fwd+bwd 0.96-1.01 of the non-persistent kernel. Sixteenth (v19): its
  # kernel span 7-12% shorter than the non-persistent one's on short walks (per-item clock
  # stamps: the K / V wait and the gap between CTAs gone), and with it the two-kernel backward
  # is the default for short causal calls (`default_config`); off otherwise.
  dkv_persistent: bool = False
  # backward: the fused kernel persistent (`persistent_ctas` CTAs over its (b, KV head, KV
  # tile) work items; with `persistent_dynamic` from the dynamic scheduler), against the time
  # each of its CTAs spends outside its walk (K / V wait, epilogue, launch gap: ~8% of the
  # kernel on short walks). A second K / V buffer does not fit beside the fused kernel's dS^T
  # and dQ tiles, so the next item's K / V are loaded into the same buffer once the consumers'
  # final meeting has seen every product that reads it done, and dK / dV leave through each
  # consumer's two dS^T tiles while that load is in flight; the Q / dO ring and the producer
  # run on across items (see `_dkv_call`). Only the fused backward has it: a call that runs
  # another one (named, or fallen back to: a block mask, head_dim > 128) refuses it (with no
  # config given, the default's is dropped). Seventeenth session (NOTES.md Hopper v20):
  # per-item clock stamps show the K / V wait and the launch gap gone and dense walks as fast,
  # so `default_config` gives it (with the dynamic scheduler) to dense calls of up to
  # _PERSISTENT_MAX_KV keys and queries: fwd+bwd +1-8%.
  # With masked steps (causal, window, documents) the walks ran 8-24% slower in its code
  # and fwd+bwd measured 0.91-0.99, so those keep the non-persistent kernel. ptxas spills
  # values it keeps live across the loop over items there, but neither fewer spills nor the
  # static split's smaller shared memory (within the 196 KB carveout) recovered the loss
  # (NOTES.md Hopper v20, v21).
  fused_persistent: bool = False
  # forward: FA3's intra-warpgroup overlap. Step t issues S_t = Q K_t^T and O += P_{t-1} V_{t-1}
  # together and waits for S_t only, so the softmax of block t runs while the tensor cores do
  # the previous block's P V (the defaults turn the consumers' ping-pong off with it). Costs a
  # second P tile in registers. head_dim <= 128 only (ignored above: the accumulators would not
  # fit).
  overlap_softmax: bool = False
  # backward: ping-pong the two consumers of the dQ and dK/dV kernels through a schedule
  # barrier, as the forward does (one consumer's exponentials and dS while the other's
  # products run): two rounds per step, one after S / dP are issued, one before the dQ (dV /
  # dK) products are. Not for the fused backward (its pair barriers would interleave with these
  # rounds and deadlock): a call that runs it refuses the switch (as `bwd_persistent`). Off:
  # correct on the H100 but 3-7% slower fwd+bwd in every cell timed (seventh session, NOTES.md
  # Hopper v8) - the backward's consumers do better running free.
  bwd_schedule_barrier: bool = False
  # forward, needs `overlap_softmax`: FA4's lazy rescale. In a step whose block keeps every pair,
  # a row's reference max moves only where the block's max exceeds it by more than this many
  # powers of two (so P <= 2^rescale_threshold: no overflow, bf16 / f16 P keep their relative
  # precision), and each thread skips the O rescale where its rows' references did not move -
  # most steps after the first few. The softmax stays exact for any reference; what changes is
  # rounding (the largest P of a row can be up to 2^threshold rather than exactly 1). 0: the
  # row max moves every step and O is rescaled every step. At most 10 (an f16 P tile holds
  # 2^15). Measured +0-5% forward on the dense 4k / 16k cells, by machine (nineteenth
  # session, NOTES.md Hopper v22).
  rescale_threshold: int = 0
  # with `rescale_threshold`: an unmasked step computes the row max only in the warps that
  # need it (`_max_on_demand`): P and its row sums are computed against the current references
  # first, and only a warp with a row sum above 2^rescale_threshold (a vote) takes the max and
  # recomputes P - the same values as without it, without the max's 64 max / 8 shuffle
  # instructions per thread in most steps. Keeps the raw scores live until the vote, which the
  # persistent kernel cannot afford: forward +11% on dense 4k / 16k (non-persistent), -12% on
  # the persistent dense 1k call (nineteenth session, NOTES.md Hopper v22).
  max_on_demand: bool = False
  # backward (dK / dV and fused kernels; causal, window and segment-id ranges, not block
  # lists or the ping-pong): each consumer skips the steps of its KV tile's walk where none of
  # its own bkv keys pairs with the query block - e.g. on a causal tile's diagonal block the
  # upper consumer's keys all lie right of every query, on a window's far edge the lower
  # consumer's all lie left of the band. A skipped step waits for the ring slot and frees it
  # (the other consumer still uses it), issues none of the consumer's 4 products of the step
  # and, in the fused kernel, writes a zero dS^T tile for the dQ product, which reads both
  # consumers' tiles. Twenty-second session (NOTES.md Hopper v25).
  bwd_skip_empty_halves: bool = True
  # forward, the overlapped walk (`overlap_softmax`) with 128-key blocks and a causal / window /
  # offset mask or ragged keys: where a tile's last block (a causal tile's diagonal) has a half
  # that is all masked for a consumer's 64 query rows, that consumer's last step computes only
  # the other half - a 64-key S product and a K = 64 P V product. Segment ids and block lists
  # keep whole steps. Twenty-fourth session (NOTES.md Hopper v27): on in every overlapped
  # default (`default_config`, see _OVERLAP_HALF_STEPS; forward +2-8%). Off in the plain
  # default (the base of A/B variants).
  fwd_half_steps: bool = False

  def __post_init__(self):
    for f in ("block_q", "bwd_block_q", "bwd_block_kv"):
      if getattr(self, f) != 64:
        raise ValueError(f"{f} must be 64 (the wgmma M of one warpgroup), got {getattr(self, f)}")
    if self.block_kv % 64:
      raise ValueError(f"block_kv must be a multiple of 64, got {self.block_kv}")
    if self.stages < 1 or self.bwd_stages < 1:
      raise ValueError("stages must be >= 1")
    rt = self.rescale_threshold
    if not isinstance(rt, int) or isinstance(rt, bool) or not 0 <= rt <= 10:
      raise ValueError(f"rescale_threshold must be an int in [0, 10] (powers of two), got {rt!r}")
    if rt and not self.overlap_softmax:
      raise ValueError("rescale_threshold needs overlap_softmax=True (the plain loop's softmax "
                       "has no lazy rescale and would ignore it)")
    if self.max_on_demand and not rt:
      raise ValueError("max_on_demand needs rescale_threshold > 0 (the row sums' limit)")
    fr = self.fused_registers
    if (not isinstance(fr, tuple) or len(fr) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in fr)):
      raise ValueError(f"fused_registers must be a (consumer, producer) tuple of ints, got {fr!r}")
    for name, split in (("consumer_registers / producer_registers",
                         (self.consumer_registers, self.producer_registers)),
                        ("fused_registers", fr)):
      # setmaxnreg takes multiples of 8 in [24, 256], and moves registers only within the
      # CTA's allocation: 384 threads launched at 168 registers (64K / 384, rounded down to a
      # multiple of 8), i.e. 504 per (consumer, consumer, producer) thread triple. (240, 32)
      # asks for 512: the consumers' increase waited forever on the H100 (fifteenth session).
      if 2 * split[0] + split[1] > 504 or min(split) < 24 or any(x % 8 for x in split):
        raise ValueError(f"{name} {split}: each a multiple of 8, >= 24, and "
                         "2 * consumer + producer <= 504 (168 registers x 3 warpgroups)")
    if self.fused_persistent and _mosaic_bwd_switches(self):
      raise ValueError(f"fused_persistent (the fused backward) excludes "
                       f"{_mosaic_bwd_switches(self)} (switches of the two-kernel backward)")
    if self.persistent_ctas is not None and (isinstance(self.persistent_ctas, bool) or
                                             not isinstance(self.persistent_ctas, int) or
                                             self.persistent_ctas < 1):
      raise ValueError(f"persistent_ctas must be an int >= 1 (or None: one CTA per SM), got "
                       f"{self.persistent_ctas!r}")


# Short calls pay the per-tile fill / drain (~2.5 KV steps) on a handful of steps per tile; the
# persistent forward hides it where every tile walks the same KV blocks (A/B on the H100, fifth
# session, dense S=1k: 1.05-1.06x cuDNN against 0.96-0.97x). Where tiles differ it measured
# slower (causal 1k 0.78x against 1.05x; causal 4k 0.97x against 1.09x), and from S=4k on the
# non-persistent grid is faster even dense (4k 0.97 vs 0.95, 16k 1.04 vs 0.95 x cuDNN).
_PERSISTENT_MAX_KV = 1024

# The intra-warpgroup overlap (`HopperConfig.overlap_softmax`), A/B on the H100 in two runs
# (sixth session, NOTES.md): forward +1 to +4% on dense and causal calls from S=4k, +2% on the
# persistent dense S=1k call, -1 to -2.5% on causal S=1k (non-persistent, ~4.5 steps per tile:
# the peeled first step and the trailing P V do not pay off). Windows, segment ids and block
# masks keep the plain loop (seventh session: window +0.3%, documents -7% forward).
_OVERLAP_MIN_KV = 2048
# ...with 240 / 24 registers (consumers / producer) in those calls: forward A/B over the sixth
# and seventh sessions faster in most comparisons (H100 dense 4k up to +7.7%, causal 16k up to
# +7.6%), never more than 1.3% slower (NOTES.md Hopper v8). The other calls keep 232 / 40:
# windows and documents measured within the noise there.
_OVERLAP_REGISTERS = dict(consumer_registers=240, producer_registers=24)
# ...and a 512-byte Mosaic reduction scratch instead of its default 2048 (the kernels here reduce
# within warps; the persistent dQ kernel reserves none): forward / the same config with 2048,
# in three A/B calls on the H100 (thirteenth session call 11, fourteenth calls 9, 10; NOTES.md
# Hopper v17) dense 4k 1.055 / 1.025 / 1.013, dense 16k 1.021 / 0.988 / 1.013, causal 4k
# 1.010 / 1.028, causal 16k 1.017 / 1.023; fwd+bwd 0.99-1.02. Small, but 8 of 10 readings up;
# it also brings the forward's shared memory (~164 KiB with the 1 KiB reservation) under the
# 164 KB carveout step.
_OVERLAP_SCRATCH = dict(reduction_scratch_bytes=512)
# ...and without the consumers' ping-pong (`schedule_barrier=False`): with the overlap the two
# consumers do as well or better running free (ninth session, NOTES.md Hopper v11: two A/B
# calls, forward dense 4k 0.98 / 1.03, dense 16k 1.02 / 1.03, causal 4k 1.02 / 1.01, causal
# 16k 1.02 / 0.97, persistent dense 1k 1.02; FA3's turn-passing ping-pong and a ping-pong
# pinned after the softmax measured no better). The plain loop keeps it.
_OVERLAP_SCHEDULE = dict(schedule_barrier=False)
# ...and FA4's lazy rescale (`HopperConfig.rescale_threshold`): forward against the same config
# without it (nineteenth session, NOTES.md Hopper v22; 5-7 rounds): on two machines dense 4k
# 1.038 / 1.033, dense 16k 1.052 / 1.034, causal 4k 1.004 / 1.015, causal 16k 0.986 / 1.020,
# persistent dense 1k 1.006 / 1.017; on a third dense 4k 0.999 / 0.997, dense 16k 1.003 /
# 0.994, causal 16k 1.018, causal 1k 1.033, window 0.993 - no loss beyond the noise anywhere.
_OVERLAP_RESCALE = dict(rescale_threshold=8)
# ...and, for the non-persistent overlapped forward (long static calls), the row max computed
# only where a warp's row sums exceed the threshold (`HopperConfig.max_on_demand`): forward
# against the lazy rescale alone (call 12 of the nineteenth session, 5 rounds) dense 4k 1.111,
# dense 16k 1.109, causal 4k 1.018, causal 16k 1.015; the persistent dense 1k kernel 0.877.
_OVERLAP_MAX_ON_DEMAND = dict(max_on_demand=True)
# ...and the half last step (`HopperConfig.fwd_half_steps`), in every overlapped default:
# forward against the same config without it (twenty-fourth session call 9, NOTES.md Hopper
# v27; 5 rounds) causal 4k 1.044, causal 16k 1.082, window 1024 at 8k 1.021, causal 1k 1.036
# (causal 4k / 16k read 1.02-1.06 in two earlier calls with intermediate forms of the change).
_OVERLAP_HALF_STEPS = dict(fwd_half_steps=True)

# The dynamic scheduler (`HopperConfig.persistent_dynamic`), forward A/B on the H100 (eleventh
# session, NOTES.md Hopper v13, against the non-persistent defaults): 8 documents at S=8k
# +14 to +18% (plain loop), sliding window 1024 at S=8k +9% and causal S=1k +9 to +12% (both
# with the overlapped softmax, one ping-pong round per CTA, no ping-pong); dense / causal
# from S=4k 0.89-1.00 and dense S=1k 0.96-0.97 (against the static persistent split), so those
# keep their kernels. A window counts as a short walk up to this band (keys per query row):
_DYNAMIC_MAX_BAND = 2048
# ...and causal calls up to _PERSISTENT_MAX_KV keys and queries take the two-kernel backward
# with the persistent dK/dV kernel (dynamic scheduler) instead of the fused one. fwd+bwd against the
# fused backward on the H100 (sixteenth session, NOTES.md Hopper v19): causal S=1k 1.036-1.067
# over four A/B readings, D=64 S=1k 1.05, S=512 1.26 (D=64: 1.13); causal 4k 0.898, window
# 0.97-1.01, documents 0.93-0.95, dense S=1k 0.95, so those keep the fused kernel. The tiles of
# a short causal call walk 1-16 query blocks: the fused kernel's ~4.5 us per CTA outside its
# walk weighs most there, and the persistent kernel has none of it.
_SHORT_CAUSAL_BWD = dict(dkv_persistent=True)
# ...and dense calls (`uniform_tiles`) of up to _PERSISTENT_MAX_KV keys and queries the
# persistent fused backward (`HopperConfig.fused_persistent`) with the dynamic scheduler (which
# the forward then uses too). fwd+bwd on the H100, dense S=1k (seventeenth session, NOTES.md
# Hopper v20): against the non-persistent fused kernel 1.076, 1.035, 1.024, and 1.030 / 1.009
# against the static split, which itself measured 1.046, 0.993 and 1.000 against it; the
# forward with the dynamic scheduler 0.976-1.022 (five readings). Small, but every reading of
# the dynamic variant was up.
_SHORT_DENSE_BWD = dict(fused_persistent=True, persistent_dynamic=True)


def default_config(head_dim: int, kv_len: int | None = None, *, uniform_tiles: bool = False,
                   static_ranges: bool = False, short_walks: str | None = None,
                   q_len: int | None = None) -> HopperConfig:
  """Tiles for `head_dim`. With `kv_len`, the per-call choice:
  * the persistent forward when the kv length is short and `uniform_tiles` (no causal mask,
    window, segment ids or block mask: every query tile walks every KV block), and where the
    query length `q_len` is that short too, the persistent fused backward;
  * the persistent forward with the dynamic scheduler where tiles walk few and unequal KV
    blocks: `short_walks="data"` (segment ids or a block mask: the plain loop, ping-pong per
    tile), `short_walks="band"` (a sliding window whose band spans <= _DYNAMIC_MAX_BAND keys)
    and causal calls (`static_ranges`) with kv_len <= _PERSISTENT_MAX_KV (both with the
    overlapped softmax, one ping-pong round per CTA and no ping-pong; the latter, where the
    query length `q_len` (None: kv_len) is that short too, also with the persistent dK/dV
    kernel, so that `default_backward` gives them the two-kernel backward: measured at
    q_len = kv_len only, and many queries on few keys make long dK/dV walks);
  * the overlapped softmax (head_dim <= 128) for persistent calls and for calls whose tiles
    walk static ranges (`static_ranges`: dense or causal - no window, segment ids or block
    mask; implied by `uniform_tiles`) with kv_len >= _OVERLAP_MIN_KV, the latter with the
    240 / 24 register split and the row max on demand (`max_on_demand`); both without the
    consumers' ping-pong, with FA4's lazy rescale (`rescale_threshold`) and with the half last
    step (`fwd_half_steps`).
  Without `kv_len`: the plain non-persistent kernel (the base of A/B variants)."""
  if short_walks not in (None, "data", "band"):
    raise ValueError(f"short_walks must be None, 'data' or 'band', got {short_walks!r}")
  d = _padded_head_dim(head_dim)
  if d <= 64:
    cfg = HopperConfig(block_kv=128, stages=3)
  elif d <= 128:
    cfg = HopperConfig(block_kv=128, stages=2)
  else:
    return HopperConfig(block_kv=64, stages=2)
  if kv_len is None:
    return cfg
  if uniform_tiles and kv_len <= _PERSISTENT_MAX_KV:
    cfg = dataclasses.replace(cfg, persistent=True, persistent_sync_per_tile=False,
                              overlap_softmax=True, **_OVERLAP_SCHEDULE,
                              **_OVERLAP_RESCALE, **_OVERLAP_HALF_STEPS)
    if (q_len or kv_len) <= _PERSISTENT_MAX_KV:
      cfg = dataclasses.replace(cfg, **_SHORT_DENSE_BWD)
  elif short_walks == "data":
    cfg = dataclasses.replace(cfg, persistent=True, persistent_dynamic=True)
  elif short_walks == "band" or (static_ranges and kv_len <= _PERSISTENT_MAX_KV):
    cfg = dataclasses.replace(cfg, persistent=True, persistent_dynamic=True,
                              persistent_sync_per_tile=False, overlap_softmax=True,
                              **_OVERLAP_SCHEDULE, **_OVERLAP_RESCALE, **_OVERLAP_HALF_STEPS)
    if short_walks != "band" and (q_len or kv_len) <= _PERSISTENT_MAX_KV:
      cfg = dataclasses.replace(cfg, **_SHORT_CAUSAL_BWD)
  elif (static_ranges or uniform_tiles) and kv_len >= _OVERLAP_MIN_KV:
    cfg = dataclasses.replace(cfg, overlap_softmax=True, **_OVERLAP_REGISTERS,
                              **_OVERLAP_SCHEDULE, **_OVERLAP_SCRATCH, **_OVERLAP_RESCALE,
                              **_OVERLAP_MAX_ON_DEMAND, **_OVERLAP_HALF_STEPS)
  return cfg


# The fused backward (dQ by TMA reduce-add inside the dK/dV kernel: 5 products per block pair
# against 7), with its dQ product a step behind and its descriptors rebuilt per step
# (thirteenth session, NOTES.md Hopper v15, v16): fwd+bwd against the two-kernel backward (with
# the same descriptor change) on the H100 dense S=1k +7%, causal S=4k +6%, causal S=16k +14%,
# window +2%; dense S=4k / 16k +13% against the two-kernel backward without it. With segment ids
# (fourteenth session, NOTES.md Hopper v17) 8 documents at S=8k +10%. It takes no block masks.

# What the fused backward needs in XLA_FLAGS to run masked calls in interpret mode (see
# `_dkv_call`); tests/conftest.py sets it on CPU machines.
INTERPRET_XLA_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _interpret_flag_set() -> bool:
  return INTERPRET_XLA_FLAG in os.environ.get("XLA_FLAGS", "").replace(" ", "")


# HopperConfig switches that only the two-kernel ("mosaic") backward has.
_MOSAIC_BWD_SWITCHES = ("bwd_persistent", "dkv_persistent", "bwd_schedule_barrier")
# The config switches each backward's kernels own ("xla" owns none).
_BWD_SWITCHES = {"mosaic": _MOSAIC_BWD_SWITCHES, "fused": ("fused_persistent",)}


def _mosaic_bwd_switches(cfg: HopperConfig | None) -> list[str]:
  return [] if cfg is None else [f for f in _MOSAIC_BWD_SWITCHES if getattr(cfg, f)]


def _foreign_bwd_switches(cfg: HopperConfig, backward: str) -> dict[str, list[str]]:
  """{owner backward: its switches `cfg` sets} for the backwards other than `backward`."""
  found = {owner: [f for f in fields if getattr(cfg, f)]
           for owner, fields in _BWD_SWITCHES.items() if owner != backward}
  return {owner: fields for owner, fields in found.items() if fields}


def default_backward(head_dim: int, *, block_mask: bool = False, masked: bool = False,
                     interpret: bool = False, config: HopperConfig | None = None,
                     segments: bool = False) -> str:
  """The backward a call gets when it names none: "fused" wherever it applies, "mosaic" for
  calls with a block mask (`block_mask`: the fused kernel takes none), for a `config` that
  asks for one of the two-kernel backward's own switches (`bwd_persistent`, `dkv_persistent`,
  `bwd_schedule_barrier`: the fused kernel would drop them; `default_config` gives causal calls
  of up to _PERSISTENT_MAX_KV keys and queries `dkv_persistent`) or whose fused kernel would
  not fit in shared memory (e.g. bwd_stages=3 at head_dim 128 with `segments`), and in
  interpret mode for masked calls (causal, window or segment ids: `masked`) unless XLA_FLAGS has
  INTERPRET_XLA_FLAG (the interpreted fused kernel would hang, see `_dkv_call`); "xla" above
  head_dim 128 (no Mosaic backward)."""
  if not bwd_kernel_supports(head_dim):
    return "xla"
  if block_mask or _mosaic_bwd_switches(config):
    return "mosaic"
  if config is not None and not _fused_fits(config, head_dim, segments):
    return "mosaic"
  if interpret and masked and not _interpret_flag_set():
    return "mosaic"
  return "fused"


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
  # block_sparsity: per-CTA block lists (blocks of _SPARSE_BLOCK) + mask_fn on partial blocks
  sparse: bool = False
  mask_fn: Any = None
  q_side_b: tuple = ()     # per q side array: True if its batch dim is B (else 1)
  kv_side_b: tuple = ()
  Bm: int = 1              # batch / head dims of the block lists (1 broadcasts)
  Hm: int = 1

  @property
  def G(self):
    return self.N // self.K

  # Per-token int32 arrays that travel by TMA next to Q / K: the segment ids, or the
  # block-sparse side arrays (the two features exclude each other).
  @property
  def q_sides(self):
    return (True,) if self.segments else self.q_side_b

  @property
  def kv_sides(self):
    return (True,) if self.segments else self.kv_side_b

  @property
  def c(self):   # scores -> base-2 exponent units
    return self.scale * LOG2E

  @property
  def r_eff(self):  # how far right of its position a query may look
    return _right_reach(self.causal, self.right)

  @property
  def masked_anything(self):
    return self.causal or self.left is not None or self.right is not None


def _right_reach(causal: bool, right):
  """How far right of its position a query may look (None: unbounded)."""
  if causal:
    return 0 if right is None else min(0, right)
  return right


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


_SPARSE_BLOCK = 128   # block size (q and kv) of the block_sparsity lists: one CTA's rows


def _range_walk(lo, flo, fhi, hi):
  """Step sequence of a contiguous range: (n, [(u0, u1, masked, block_of_step)])."""
  blk = lambda u: lo + u
  return hi - lo, [(0, flo - lo, True, blk), (flo - lo, fhi - lo, False, blk),
                   (fhi - lo, hi - lo, True, blk)]


def _half_block(st: _Static, q_base, rows: int, j, half: int):
  """(half, off) for the 2 * half keys of block j against query rows [q_base, q_base + rows):
  half is True where one of the block's two halves keeps no pair with any of the rows, off
  the first key of the other half within the block (where both keep none: the upper one,
  which then computes a fully masked tile)."""
  lo, _, _, hi = _kv_ranges(st, q_base, rows, half)
  hi = jnp.minimum(hi, _cdiv_nonneg(st.S, half))   # halves of padding keys only
  dead_lo = 2 * j < lo
  dead_hi = 2 * j + 1 >= hi
  return dead_lo | dead_hi, jnp.where(dead_lo, half, 0)


def _consumer_walk(lo, flo, fhi, hi, own_lo, own_hi):
  """`_range_walk` of a KV tile's query blocks [lo, hi) for a consumer whose own keys pair only
  with blocks [own_lo, own_hi): the steps outside that are "skip" sections. own_lo / own_hi
  are clamped into [lo, flo] / [fhi, hi] (a consumer's keys meet every block that is full for
  the whole tile), which only ever widens what the consumer computes."""
  own_lo = jnp.minimum(jnp.maximum(own_lo, lo), flo)
  own_hi = jnp.minimum(jnp.maximum(own_hi, fhi), hi)
  blk = lambda u: lo + u
  return hi - lo, [(0, own_lo - lo, "skip", blk), (own_lo - lo, flo - lo, True, blk),
                   (flo - lo, fhi - lo, False, blk), (fhi - lo, own_hi - lo, True, blk),
                   (own_hi - lo, hi - lo, "skip", blk)]


def _halves_to_tile(r0, r1):
  """A KV tile's query block ranges from its two halves' (lo, flo, fhi, hi): visit what either
  half visits, no mask where both halves need none."""
  return _order(jnp.minimum(r0[0], r1[0]), jnp.maximum(r0[1], r1[1]),
                jnp.minimum(r0[2], r1[2]), jnp.maximum(r0[3], r1[3]))


def _list_walk(lists, bm, hm, row, r: int):
  """Step sequence of one row of block lists (num_partial, idx_partial, num_full, idx_full):
  the partial blocks (masked), then the full ones; each listed block is `r` kernel steps.

  Entries are scalar loads straight from GMEM, as `_read_ranges`: the producer reads one per
  step, `stages` steps ahead of the consumers, and the consumers only in masked steps (issued
  first in the step, so the latency hides behind the QK^T product). Staging the row in SMEM
  would cost a TMA, a barrier and 2*nkv*4 bytes per CTA for the same scalar loads."""
  num_p, idx_p, num_f, idx_f = lists
  n_p = num_p[bm, hm, row] * r
  n_f = num_f[bm, hm, row] * r

  def blk(idx_ref, u0):
    def f(u):
      u = u - u0
      if r == 1:
        return idx_ref[bm, hm, row, u]
      return idx_ref[bm, hm, row, lax.div(u, r)] * r + lax.rem(u, r)
    return f
  return n_p + n_f, [(0, n_p, True, blk(idx_p, 0)), (n_p, n_p + n_f, False, blk(idx_f, n_p))]


def _walk(sections, body, carry):
  """Runs body(u, carry, masked=, blk=) over the sections of `_range_walk` / `_list_walk` /
  `_consumer_walk` (masked: True, False or "skip")."""
  for u0, u1, masked, blk in sections:
    carry = lax.fori_loop(u0, u1, functools.partial(body, masked=masked, blk=blk), carry)
  return carry


def _without_not(fn):
  """`fn` evaluated with every `not` rewritten: of a boolean array as `int32(x) == 0`, of a
  signed integer array as `-x - 1`.

  Mosaic GPU in jax 0.11.2 cannot lower `not` of a boolean register array ("Register bitwidth
  in target type must be divisible by 8, got 2", H100, sixth session) while it lowers the
  conversion and the compare (and neg / sub); `~m` is common in mask functions, so the kernel
  re-evaluates the traced function with that substitution (nested jit bodies included) instead
  of refusing it. Integer `not` is rewritten too, so that no form of `not` reaches the lowering
  untested (unsigned integers, which position masks do not use, are left as they are)."""
  def eval_jaxpr(jaxpr, consts, args):
    env = {}

    def read(v):
      return v.val if isinstance(v, jax_extend.core.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      dt = eqn.invars[0].aval.dtype if eqn.invars else None
      if eqn.primitive is lax.not_p and dt == jnp.bool_:
        outs = [lax.convert_element_type(ins[0], jnp.int32) == 0]
      elif eqn.primitive is lax.not_p and jnp.issubdtype(dt, jnp.signedinteger):
        outs = [lax.sub(lax.neg(ins[0]), jnp.asarray(1, dt))]
      elif eqn.primitive.name in ("pjit", "jit", "closed_call") and "jaxpr" in eqn.params:
        inner = eqn.params["jaxpr"]
        outs = eval_jaxpr(inner.jaxpr, inner.consts, ins)
      else:
        # first-order primitives only: MASK_OPS admits no control flow
        outs = eqn.primitive.bind(*ins, **eqn.params)
        if not eqn.primitive.multiple_results:
          outs = [outs]
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = eval_jaxpr(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
  return wrapped


def _tile_keep(st: _Static, b, h, shape, q_axis: int, q_pos, kv_pos, kv_idx, q_vecs, kv_vecs):
  """Mask of a masked block's tile ([q, kv] if q_axis == 0, else [kv, q]); None keeps all.

  q_vecs / kv_vecs: the side values of the tile's rows / columns (ROW / COL registers)."""
  keep = _keep(st, q_pos, kv_pos, kv_idx)   # sparse: only the padded-key mask remains
  if st.segments:
    keep = _and(keep, _seg_keep(q_vecs[0], kv_vecs[0], shape, q_axis))
  if st.sparse and st.mask_fn is not None:
    kv_axis = 1 - q_axis
    qv = tuple(lax.broadcast_in_dim(x, shape, [q_axis]) for x in q_vecs)
    kvv = tuple(lax.broadcast_in_dim(x, shape, [kv_axis]) for x in kv_vecs)
    m = jnp.asarray(_without_not(st.mask_fn)(b, h, q_pos, kv_pos, qv, kvv), bool)
    if m.shape != tuple(shape):
      m = jnp.broadcast_to(m, shape)
    keep = _and(keep, m)
  return keep


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


def _schedule_round(barrier):
  """One ping-pong round of the two consumer warpgroups on their 2-arrival schedule barrier;
  nothing when the kernel runs without one (None)."""
  if barrier is not None:
    plgpu = _api()["plgpu"]
    plgpu.barrier_arrive(barrier)
    plgpu.barrier_wait(barrier)


def _opaque_zero(st: "_Static"):
  """An int32 scalar 0 that LLVM can neither fold nor hoist out of a loop (inline PTX with a
  side effect). Indexing a buffer with it in a loop body makes Mosaic compute that buffer's
  wgmma descriptors there, rather than once before the loop, keeping 2 x 8 64-bit values
  per operand live across the whole walk (ptxas spills them and reloads them before every
  issue: NOTES.md Hopper v15)."""
  if st.interpret:
    return jnp.int32(0)
  a = _api()
  plgpu, ir, llvm = a["plgpu"], a["ir"], a["llvm"]
  from jax.experimental.mosaic import gpu as mgpu  # pylint: disable=g-import-not-at-top

  @plgpu.inline_mgpu(return_type=plgpu.ShapeDtypeStruct(
      (), jnp.int32, layout=plgpu.Layout.WG_SPLAT(())))
  def zero(ctx):
    del ctx
    z = llvm.inline_asm(ir.IntegerType.get_signless(32), [], "mov.u32 $0, 0;", "=r",
                        has_side_effects=True)
    return mgpu.FragmentedArray.splat(z, (), is_signed=True)
  return zero()


def _any_in_thread(fa, predicate: str, value):
  """i1 of an inline Mosaic GPU body: does `fa[i] <predicate> value` (an arith.CmpFPredicate
  name) hold for any element this thread holds of the float32 array `fa`."""
  a = _api()
  ir, arith = a["ir"], a["arith"]
  from jax._src.lib.mlir.dialects import vector  # pylint: disable=g-import-not-at-top
  out = None
  for reg in fa.registers.flat:
    if "vector" in str(reg.type):
      xs = [vector.extract(reg, dynamic_position=[], static_position=ir.DenseI64ArrayAttr.get([i]))
            for i in range(ir.VectorType(reg.type).shape[0])]
    else:
      xs = [reg]
    for x in xs:
      hit = arith.cmpf(getattr(arith.CmpFPredicate, predicate), x, value)
      out = hit if out is None else arith.ori(out, hit)
  return out


def _if_arrays(cond, then_fn, outs):
  """In an inline Mosaic GPU body: `then_fn()` if the i1 `cond` holds in this thread, else
  `outs` (FragmentedArrays; then_fn returns arrays of the same layouts and types), as one
  scf.if over their registers. -> the chosen arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = _api()
  ir = a["ir"]
  from jax._src.lib.mlir.dialects import scf  # pylint: disable=g-import-not-at-top
  from jax.experimental.mosaic import gpu as mgpu  # pylint: disable=g-import-not-at-top
  regs_of = lambda arrays: [r for o in arrays for r in o.registers.flat]
  if_op = scf.IfOp(cond, [r.type for r in regs_of(outs)], has_else=True)
  with ir.InsertionPoint(if_op.then_block):
    scf.YieldOp(regs_of(then_fn()))
  with ir.InsertionPoint(if_op.else_block):
    scf.YieldOp(regs_of(outs))
  res, k, chosen = list(if_op.results), 0, []
  for o in outs:
    regs = np.empty(o.registers.shape, dtype=object)
    for i in range(regs.size):
      regs.flat[i] = res[k]
      k += 1
    chosen.append(mgpu.FragmentedArray(_registers=regs, _layout=o.layout, _is_signed=None))
  return tuple(chosen)


def _rescale_moved(st: "_Static", acc, alpha):
  """acc * alpha per row, each thread skipping the multiply where both of its rows' alpha are
  exactly 1 (a per-thread branch: Pallas has none, hence the inline Mosaic GPU body)."""
  if st.interpret:
    return acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
  a = _api()
  plgpu, ir, arith = a["plgpu"], a["ir"], a["arith"]

  @plgpu.inline_mgpu(arg_types=(a["WGMMA"], a["ROW"]), return_type=plgpu.ShapeDtypeStruct(
      acc.shape, jnp.float32, layout=a["WGMMA"]))
  def body(ctx, acc_fa, alpha_fa):
    del ctx
    # unordered: a NaN alpha rescales (and so propagates)
    moved = _any_in_thread(alpha_fa, "UNE", arith.constant(ir.F32Type.get(), 1.0))
    scaled = lambda: (acc_fa * alpha_fa.broadcast_in_dim(acc_fa.shape, (0,), acc_fa.layout),)
    return _if_arrays(moved, scaled, (acc_fa,))[0]
  return body(acc, alpha)


def _max_on_demand(s, p16, l_blk, m_i, c: float, threshold: int, dtype):
  """FA4's lazy rescale without the row max in the common case (GPU only: interpret mode runs
  the lazy rule itself, which gives the same values). p16 / l_blk are the block's P (in
  `dtype`) and row sums against the rows' current references m_i; they stand wherever every
  row sum of the warp is <= 2^threshold (then no P exceeds it and no reference moves). A warp
  with a larger sum (a vote: warp-uniform, so the row max's shuffles run with the whole warp)
  computes its rows' max, moves the references that it outgrew by more than 2^threshold and
  recomputes P from the raw scores s. -> (P, row sums, new references, alpha)."""
  T = float(2.0 ** threshold)
  a = _api()
  plgpu, ir, arith, llvm = a["plgpu"], a["ir"], a["arith"], a["llvm"]
  from jax.experimental.mosaic import gpu as mgpu  # pylint: disable=g-import-not-at-top
  W, R = a["WGMMA"], a["ROW"]
  rows = s.shape[0]
  sds = plgpu.ShapeDtypeStruct

  @plgpu.inline_mgpu(arg_types=(W, W, R, R), return_type=(
      sds(s.shape, dtype, layout=W), sds((rows,), jnp.float32, layout=R),
      sds((rows,), jnp.float32, layout=R), sds((rows,), jnp.float32, layout=R)))
  def body(ctx, s_fa, p_fa, l_fa, m_fa):
    del ctx
    f32, i32 = ir.F32Type.get(), ir.IntegerType.get_signless(32)
    # ordered: a NaN sum keeps its (NaN) P
    need = _any_in_thread(l_fa, "OGT", arith.constant(f32, T))
    voted = llvm.inline_asm(
        i32, [arith.extui(i32, need)],
        "{ .reg .pred %p<2>; setp.ne.u32 %p0, $1, 0; vote.sync.any.pred %p1, %p0, -1; "
        "selp.u32 $0, 1, 0, %p1; }", "=r,r", has_side_effects=True)
    redo = arith.cmpi(arith.CmpIPredicate.ne, voted, arith.constant(i32, 0))
    one = mgpu.FragmentedArray.splat(arith.constant(f32, 1.0), m_fa.shape, layout=m_fa.layout)

    def recompute():
      splat = lambda v: mgpu.FragmentedArray.splat(arith.constant(f32, v), m_fa.shape,
                                                  layout=m_fa.layout)
      m_blk = s_fa.reduce("max", 1) * splat(c)
      moved = m_blk > m_fa + splat(float(threshold))
      m_new = moved.select(m_blk, m_fa)
      cs = mgpu.FragmentedArray.splat(arith.constant(f32, c), s_fa.shape, layout=s_fa.layout)
      p = (s_fa * cs - m_new.broadcast_in_dim(s_fa.shape, (0,), s_fa.layout)).exp2(approx=True)
      return (p.astype(p_fa.mlir_dtype), p.reduce("add", 1), m_new,
              moved.select((m_fa - m_new).exp2(approx=True), one))
    return _if_arrays(redo, recompute, (p_fa, l_fa, m_fa, one))
  return body(s, p16, l_blk, m_i)


def _wait_if(cond, barrier):
  """Producer: wait for a ring slot's "free" barrier once the ring has wrapped around (`cond`:
  traced, or a Python bool when the step is known statically)."""
  a = _api()
  if isinstance(cond, bool):
    if cond:
      a["plgpu"].barrier_wait(barrier)
    return

  @a["pl"].when(cond)
  def _():
    a["plgpu"].barrier_wait(barrier)


def _ring_producer(n, sections, lo, stages: int, sparse: bool, load_step, free_barriers):
  """The producer warpgroup of a non-persistent kernel (forward, dQ): streams the tile's n KV
  blocks through the ring - step t uses slot t % stages, and `load_step(j, slot, wait)` waits
  the slot's "free" barrier(s) when `wait` (from step `stages` on), then issues block j's TMA
  loads - and drains the last `stages` "free" phases. Blocks: lo + t for a range walk, the
  lists' entries (one loop per list) for a sparse one."""
  pl = _api()["pl"]
  if sparse:
    def sbody(t, carry, masked, blk):
      del masked
      slot = lax.rem(t, stages)
      j = blk(t)
      load_step(j, slot, t >= stages)
      return carry
    _walk(sections, sbody, None)
  else:
    for i in range(stages):
      pl.when(i < n)(functools.partial(load_step, lo + i, i, False))

    def body(t, carry):
      slot = lax.rem(t, stages)
      load_step(lo + t, slot, True)
      return carry
    lax.fori_loop(jnp.int32(stages), jnp.maximum(n, stages), body, None)
  _drain(n, stages, free_barriers)


def _smem_transforms(D: int, dtype):
  plgpu = _api()["plgpu"]
  swz = min(128, D * jnp.dtype(dtype).itemsize)
  return (plgpu.TilingTransform((8, swz // jnp.dtype(dtype).itemsize)),
          plgpu.SwizzleTransform(swz))


def _compiler_params(cfg: HopperConfig | None = None,
                     reduction_scratch_bytes: int | None = None):
  """reduction_scratch_bytes: overrides `cfg.reduction_scratch_bytes` (the persistent dQ
  kernel reserves none)."""
  plgpu = _api()["plgpu"]
  kw = {}
  if reduction_scratch_bytes is not None:
    kw["reduction_scratch_bytes"] = reduction_scratch_bytes
  elif cfg is not None and cfg.reduction_scratch_bytes is not None:
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
def _side_operands(st: _Static, seg, sp):
  """(q side arrays, kv side arrays) the kernels stream next to Q / K."""
  if st.segments:
    return (seg[0],), (seg[1],)
  if st.sparse:
    return tuple(sp[2]), tuple(sp[3])
  return (), ()


def _side_row(has_b: bool, b):
  return b if has_b else 0


def _ring_tile(bhc, cnt, plan, kv_head, stages: int, sparse: bool, load_step):
  """A persistent forward / dQ producer's work item bhc = (b, h, ci): its KV blocks through
  the ring, counting ring steps over the whole CTA from `cnt` (step g uses slot g % stages;
  `load_step(b, kv_head, block, slot, wait)` waits the slot's "free" barrier(s) when `wait`,
  i.e. from step `stages` on, then issues its TMA loads) -> cnt + its steps."""
  b, h, ci = bhc
  _, n, sections, lo = plan(b, h, ci)
  kvh = kv_head(h)

  def body(t, carry, masked=None, blk=None):
    del masked
    g = cnt + t
    j = lo + t if blk is None else blk(t)
    load_step(b, kvh, j, lax.rem(g, stages), g >= stages)
    return carry
  if sparse:   # block indices from the lists, one loop per list
    _walk(sections, body, None)
  else:
    lax.fori_loop(0, n, body, None)
  return cnt + n


def _fwd_work_item(st: _Static, w, n_tiles: int):
  """Work item `w` of the persistent forward and of the persistent dQ kernel (same grid) ->
  (b, h, ci): heads fastest (or tiles, with `cfg.tiles_fastest`), then batch - the
  non-persistent grid's axes in Python order, not the order the hardware launches that grid
  in (see `_grid`); causal tiles reversed (longest rows first). Seventeenth session: the
  hardware's order (batch fastest, heads slowest) measured slower for the documents forward
  (0.83x) and no faster elsewhere (NOTES.md Hopper v20)."""
  N = st.N
  if st.cfg.tiles_fastest:
    ci, rest = lax.rem(w, n_tiles), lax.div(w, n_tiles)
    h, b = lax.rem(rest, N), lax.div(rest, N)
  else:
    h, rest = lax.rem(w, N), lax.div(w, N)
    ci, b = lax.rem(rest, n_tiles), lax.div(rest, n_tiles)
  if st.causal:
    ci = (n_tiles - 1) - ci
  return b, h, ci


def _dkv_work_item(st: _Static, w, n_tiles: int):
  """Work item `w` of the persistent dK/dV kernel and of the persistent fused backward ->
  (b, kv head, ci): heads fastest (or tiles, with `cfg.tiles_fastest`), then batch, as
  `_fwd_work_item`. Causal tiles keep their order: KV tile 0 has the most query blocks."""
  K = st.K
  if st.cfg.tiles_fastest:
    ci, rest = lax.rem(w, n_tiles), lax.div(w, n_tiles)
    h, b = lax.rem(rest, K), lax.div(rest, K)
  else:
    h, rest = lax.rem(w, K), lax.div(w, K)
    ci, b = lax.rem(rest, n_tiles), lax.div(rest, n_tiles)
  return b, h, ci


def _item_fetcher(slot: int, first: int, fetches: int):
  """Compiled persistent kernels with `cfg.persistent_dynamic`: f(counter_ref, items_smem)
  for the producer warpgroup - one thread takes the next work item `first + atomic_add(
  counter, 1)` and stores it in items_smem[slot]. An `inline_mgpu` body (Pallas has no atomic
  that returns the old value); `slot` is static so no index crosses into it.

  The launch makes `fetches` adds in all (each CTA's producer adds until it draws an item past
  the end); the one that draws the last value resets the counter to 0 - no add can follow it -
  so the counter is zero again after every launch, whichever buffer XLA gave it."""
  a = _api()
  plgpu, mu, ir, llvm, memref, arith = (a["plgpu"], a["mgpu_utils"], a["ir"], a["llvm"],
                                        a["memref"], a["arith"])

  @plgpu.inline_mgpu(arg_types=(plgpu.RefType(), plgpu.RefType()))
  def fetch(ctx, counter_ref, items_ref):
    del ctx
    i32 = ir.IntegerType.get_signless(32)
    with mu.single_thread(scope=mu.ThreadSubset.WARPGROUP):
      ptr = mu.memref_ptr(counter_ref)
      old = llvm.inline_asm(i32, [ptr], "atom.global.add.u32 $0, [$1], 1;", "=r,l",
                            has_side_effects=True)
      with mu.when(arith.cmpi(arith.CmpIPredicate.eq, old, mu.c(fetches - 1, i32))):
        llvm.inline_asm(ir.Type.parse("!llvm.void"), [ptr], "st.global.u32 [$0], 0;", "l",
                        has_side_effects=True)
      item = arith.addi(old, mu.c(first, i32))
      elem = ir.MemRefType(items_ref.type).element_type
      if elem != i32:   # a float32 slot (see `_dynamic_items`)
        item = arith.sitofp(elem, item)
      memref.store(item, items_ref, [mu.c(slot, ir.IndexType.get())])
  return fetch


def _dynamic_items(st: _Static, items: int, n_ctas: int, counter_ref, items_smem, item_bar,
                   item_free):
  """The handoff of a persistent kernel's dynamically scheduled work items (`cfg.
  persistent_dynamic`): item p of a CTA (p = 0 is `cta`, taken by every warpgroup without a
  handoff) is published by the producer into shared-memory slot p % 2 with `item_bar[p % 2]`
  and taken by both consumers, who release the slot through `item_free[p % 2]` (2 arrivals).
  The producer publishes item p + 1 when it starts streaming item p, so the consumers (who
  need it when they start item p, to prefetch its Q) find it there; it waits for the slot to
  be free from p + 1 = 3 on (the slot's previous item, p - 1, taken). An item >= items ends
  every warpgroup's loop. `counter_ref`: the zeroed int32 [1] GMEM counter; None in interpret
  mode, where item p is the static split's cta + p * n_ctas. `items_smem`: 2 int32 slots, or
  2 float32 ones (exact below 2^24 items) where the kernel has room only in an f32 buffer.
  -> (publish(p) -> item, take(p) -> item, drain(last p published))."""
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cta = lax.axis_index("cta")
  if items_smem.dtype == jnp.float32 and items + n_ctas > 2 ** 24:
    raise ValueError(f"{items} work items: more than a float32 item slot holds exactly")

  def publish(p):
    slot = lax.rem(p, 2)
    _wait_if(p >= 3, item_free.at[slot])
    if counter_ref is None:
      items_smem[slot] = (cta + p * n_ctas).astype(items_smem.dtype)
    else:
      for s in (0, 1):
        pl.when(slot == s)(
            lambda s=s: _item_fetcher(s, n_ctas, items)(counter_ref, items_smem))
    plgpu.barrier_arrive(item_bar.at[slot])
    # the producer reads it too (one of its threads stored it): its own wait on the barrier
    # (which only it arrives on) orders that store before the warpgroup's loads
    plgpu.barrier_wait(item_bar.at[slot])
    return items_smem[slot].astype(jnp.int32)

  def take(p):
    slot = lax.rem(p, 2)
    plgpu.barrier_wait(item_bar.at[slot])
    w = items_smem[slot].astype(jnp.int32)
    plgpu.barrier_arrive(item_free.at[slot])
    return w

  def drain(last):
    # the producer observes the "free" phases of the last two items it published (interpret
    # mode checks that every phase a thread waits on is observed; see `_drain`)
    def body(p, carry):
      plgpu.barrier_wait(item_free.at[lax.rem(p, 2)])
      return carry
    lax.fori_loop(jnp.maximum(last - 1, 1), last + 1, body, None)

  return publish, take, drain


def _persistent_schedule(st: _Static, items: int, n_ctas: int, item_of, dynamic_refs):
  """The work items of a persistent kernel (`item_of`: item number -> (b, h, ci); forward and
  dQ: `_fwd_work_item`, dK/dV: `_dkv_work_item`), from the static split (`dynamic_refs`
  None: CTA `cta` runs items cta, cta + n_ctas, ...) or the dynamic scheduler (`dynamic_refs`
  = `_dynamic_items`' counter_ref, items_smem, item_bar, item_free).
  -> (first: the CTA's first item (b, h, ci),
      consumer_loop(tile): runs base = tile(p, (b, h, ci), base, following) over the CTA's
        tiles p = 0, 1, ... (base: the ring steps of the earlier tiles; following() -> (has
        next, the next item's (b, h, ci)), computed where it is called: carried as the item
        number at most, not as 4 values live across the tile's loop - registers the dK/dV
        kernel does not have),
      producer(ring_tile, stages, free_barriers): the producer warpgroup's ring over the same
        tiles - cnt = ring_tile((b, h, ci), cnt) issues a tile's loads from ring step cnt -
        then the `_drain` of the last `stages` "free" phases)."""
  cta = lax.axis_index("cta")
  zero = jnp.int32(0)
  if dynamic_refs is None:
    # cta < n_ctas <= items, so every CTA has at least one item
    n_local = lax.div(items - 1 - cta, n_ctas) + 1
    item = lambda k: item_of(cta + k * n_ctas)

    def consumer_loop(tile):
      lax.fori_loop(0, n_local, lambda k, base: tile(
          k, item(k), base, lambda: (k + 1 < n_local, item(k + 1))), zero)

    def producer(ring_tile, stages, free_barriers):
      total = lax.fori_loop(0, n_local, lambda k, cnt: ring_tile(item(k), cnt), zero)
      _drain(total, stages, free_barriers)
    return item_of(cta), consumer_loop, producer

  publish, take, drain = _dynamic_items(st, items, n_ctas, *dynamic_refs)
  not_done = lambda carry: carry[1] < items

  def consumer_loop(tile):
    def body(carry):   # the items `take` hands out, until one is past the end
      p, w, base = carry
      w_next = take(p + 1)
      return p + 1, w_next, tile(p, item_of(w), base,
                                 lambda: (w_next < items, item_of(w_next)))
    lax.while_loop(not_done, body, (zero, cta, zero))

  def producer(ring_tile, stages, free_barriers):
    def body(carry):   # item p + 1 published as item p starts streaming
      p, w, cnt = carry
      w_next = publish(p + 1)
      return p + 1, w_next, ring_tile(item_of(w), cnt)
    p_end, _, total = lax.while_loop(not_done, body, (zero, cta, zero))
    _drain(total, stages, free_barriers)
    drain(p_end)
  return item_of(cta), consumer_loop, producer


def _prefetch_next(following, issue):
  """A persistent consumer's prefetch of its next item into the other buffer: the TMA stores
  it issued from that buffer (the previous item's outputs) must have read SMEM first; then
  `issue(next (b, h, ci))` if there is a next item (`following`: see `_persistent_schedule`)."""
  a = _api()
  a["plgpu"].wait_smem_to_gmem(0, wait_read_only=True)
  has_next, nxt = following()
  a["pl"].when(has_next)(lambda: issue(nxt))


def _fwd_call(st: _Static, q, k, v, seg=None, sp=None):
  """seg: None, or (q_seg [B, Tp], kv_seg [B, Sp]) int32 (edge-padded) when st.segments.
  sp: None, or (kv lists, q lists, q side arrays, kv side arrays) when st.sparse.

  Non-persistent: one CTA per (head, q tile, batch). Persistent (`cfg.persistent`, see
  `_fwd_persistent`): `n_ctas` CTAs, CTA `cta` runs the work items w = cta + k * n_ctas
  (local tiles k = 0, 1, ...) in one loop per warpgroup, every warpgroup deriving the same
  (b, h, ci) and KV step sequence per item. Barrier phases across tiles (every waiter observes
  every completion of a barrier it waits on, in order):
  * K/V ring: producer and consumers count ring steps over the whole CTA (`base` = the steps
    of the CTA's earlier tiles): step g uses slot g % stages; the producer waits a slot's
    "free" barrier only for g >= stages (the first `stages` loads of the CTA have no wait),
    then `_drain`s the last `stages` "free" phases once, at the end. So it streams the next
    tile's blocks as soon as slots free up, while the consumers finish the current tile. An
    empty tile (n = 0 steps) loads nothing and waits nothing on the ring.
  * Q: 2 buffers per consumer, each with its own barrier (index buf * 2 + wg). Local tile k
    uses buffer k % 2; its Q (+ row side values) load is issued at the start of tile k - 1
    (tile 0: before the loop) and waited at the start of tile k, so each barrier has at
    most one load in flight and each completion is waited once.
  * O / lse: staged through the tile's Q buffer / the consumer's lse buffer and TMA-stored
    without waiting; at the start of the next tile (before the prefetch overwrites the other
    Q buffer) `wait_smem_to_gmem(0, wait_read_only=True)` waits for the stores to have read
    SMEM - that also frees the single lse buffer well before the next tile writes it; all
    stores are awaited at the end of the CTA.
  * Schedule barrier (ping-pong, 2 arrivals): per step each consumer does two arrive+waits,
    plus one extra round per tile (consumer 1 before its loop, consumer 0 after), as in the
    non-persistent kernel: 2n + 1 arrivals and waits per consumer per tile (both consumers
    see the same n, including n = 0, where consumer 1's extra round meets consumer 0's), so
    the phases pair up within each tile. Per tile rather than once per CTA because then
    consumer 0's epilogue overlaps consumer 1's last P V and consumer 1's epilogue consumer
    0's first Q K^T of the next tile; with one extra round per CTA (also balanced:
    `HopperConfig(persistent_sync_per_tile=False)`) consumer 1's last P V of a tile would wait for
    consumer 0's epilogue and next-tile start, the tensor cores idle meanwhile.
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.block_q, cfg.block_kv, cfg.stages
  D, dtype, G = st.D, st.dtype, st.G
  n_tiles = st.Tp // (2 * bq)
  c = st.c
  segs, sparse = st.segments, st.sparse
  q_sides, kv_sides = st.q_sides, st.kv_sides
  nqs, nks = len(q_sides), len(kv_sides)
  persistent = _fwd_persistent(cfg, D, jnp.dtype(dtype).itemsize, nqs, nks)
  overlap = cfg.overlap_softmax and D <= 128
  items = st.B * st.N * n_tiles
  n_ctas = _persistent_ctas(cfg, items) if persistent else None
  dynamic = persistent and cfg.persistent_dynamic
  counter = dynamic and not st.interpret   # the atomic's GMEM counter (an operand)
  # `cfg.fwd_half_steps`: only where some block can have a half that is all masked for a consumer
  half_steps = (overlap and cfg.fwd_half_steps and not segs and not sparse and bkv == 2 * bq
                and (st.masked_anything or st.Sp != st.S))
  half = bkv // 2

  def kernel(*refs):
    it = iter(refs)
    q_ref, k_ref, v_ref = next(it), next(it), next(it)
    qside_refs = [next(it) for _ in range(nqs)]
    kvside_refs = [next(it) for _ in range(nks)]
    rng_ref = next(it) if segs else None
    lists = tuple(next(it) for _ in range(4)) if sparse else None
    counter_ref = next(it) if counter else None
    (o_ref, lse_ref, q_smem, k_smem, v_smem, lse_smem,
     q_bar, k_bar, v_bar, k_free, v_free, sched) = (next(it) for _ in range(12))
    qside_smem = [next(it) for _ in range(nqs)]
    kvside_smem = [next(it) for _ in range(nks)]
    if dynamic:
      items_smem, item_bar, item_free = next(it), next(it), next(it)

    def plan(b, h, ci):
      """Query tile ci of (b, h): (first row, KV steps n, `_walk` sections, first block of a
      range; None for lists)."""
      r0 = ci * (2 * bq)
      if sparse:
        n, sections = _list_walk(lists, b if st.Bm > 1 else 0, h if st.Hm > 1 else 0, ci,
                                 _SPARSE_BLOCK // bkv)
        return r0, n, sections, None
      if segs:   # data-dependent ranges, precomputed per (batch, tile): see _seg_block_ranges
        lo, flo, fhi, hi = _read_ranges(rng_ref, b, ci)
      else:
        lo, flo, fhi, hi = _kv_ranges(st, r0, 2 * bq, bkv)
      n, sections = _range_walk(lo, flo, fhi, hi)
      return r0, n, sections, lo

    wg = lax.axis_index("wg")

    sched_sync = functools.partial(_schedule_round, sched if cfg.schedule_barrier else None)

    def softmax_update(s, m_i, l_i, masked: bool):
      """Online softmax of one block's (masked) raw scores -> (P in the input dtype, new row
      reference (the row max, or with `cfg.rescale_threshold` a lagging one), new row sum,
      alpha = the factor rescaling the accumulator from the old reference)."""
      if cfg.rescale_threshold and cfg.max_on_demand and not masked and not st.interpret:
        p = jnp.exp2(s * c - lax.broadcast_in_dim(m_i, s.shape, [0]))
        p16, l_blk, m_new, alpha = _max_on_demand(
            s, p.astype(dtype), p.sum(axis=1), m_i, c, cfg.rescale_threshold, dtype)
        return p16, m_new, l_i * alpha + l_blk, alpha
      m_blk = s.max(axis=1) * c
      if cfg.rescale_threshold and not masked:
        # -inf (no kept key yet) always moves; NaN never does (and propagates through p)
        m_new = jnp.where(m_blk > m_i + float(cfg.rescale_threshold), m_blk, m_i)
        alpha = jnp.where(m_new == m_i, 1.0, jnp.exp2(m_i - m_new))
        p = jnp.exp2(s * c - lax.broadcast_in_dim(m_new, s.shape, [0]))
        return p.astype(dtype), m_new, l_i * alpha + p.sum(axis=1), alpha
      m_new = jnp.maximum(m_i, m_blk)
      m_use = jnp.where(m_new == _NEG_INF, 0.0, m_new) if masked else m_new
      alpha = jnp.exp2(m_i - m_use)
      p = jnp.exp2(s * c - lax.broadcast_in_dim(m_use, s.shape, [0]))
      return p.astype(dtype), m_new, l_i * alpha + p.sum(axis=1), alpha

    def overlapped_walk(qs, n, sections, ring, acc, m_i, l_i, apply_mask, q_base):
      """The KV loop with `cfg.overlap_softmax` (see HopperConfig): step 0 peeled (its S, then
      its softmax), steps t >= 1 issue S_t and P_{t-1} V_{t-1} together and run the softmax of
      S_t while the P V product is in flight, and the last P V is issued after the loop.

      Barriers per step as in the plain loop: "K free" once S_t has landed, "V free" once
      P_{t-1} V_{t-1} has, V_t and the next K waited at the end of the softmax inside the
      second ping-pong round; two schedule-barrier rounds per step (one after the products
      are issued, one after the softmax), so the consumers' rounds pair up as before.

      With `half_steps` (see `HopperConfig.fwd_half_steps`): where the tile's last block (a
      causal tile's diagonal) has a half that is all masked for this consumer's rows, that
      step runs after the loop as a half step: its S covers the other half only (N = 64), and
      the last P V reads only that half of V (K = 64). Only a half step runs in straight-line
      code: whole steps there made ptxas spill 180-372 bytes over the kernel (twenty-fourth
      session, NOTES.md Hopper v27)."""
      slot_of = lambda t: lax.rem(ring(t), stages)
      if half_steps:
        # a range walk (no segment ids or lists): every section maps step u to block lo + u
        j_last = sections[-1][3](n - 1)
        h_last, off_last = _half_block(st, q_base, bq, j_last, half)
        h_last = h_last & (n >= 2)   # step 0 is the peeled first step

      def k_of(slot, off):   # a slot's K, or its `half` keys from `off`
        return k_smem.at[slot] if off is None else k_smem.at[slot, pl.ds(off, half)]

      def v_of(slot, off):
        return v_smem.at[slot] if off is None else v_smem.at[slot, pl.ds(off, half)]

      def kv_vecs_of(slot):
        # the block's KV side values share the K slot: read before K's "free" arrival
        return [_load_vec(st, sm.at[slot], "COL") for sm in kvside_smem]

      def end_softmax(t):   # the second ping-pong round; V_t and K_{t+1} land inside it
        if cfg.schedule_barrier:
          plgpu.barrier_arrive(sched)
        plgpu.barrier_wait(v_bar.at[slot_of(t)])

        @pl.when(t + 1 < n)
        def _():
          plgpu.barrier_wait(k_bar.at[slot_of(t + 1)])
        if cfg.schedule_barrier:
          plgpu.barrier_wait(sched)

      p0 = _cast(st, jnp.zeros((bq, bkv), dtype), "WGMMA")

      def first(carry):
        # Step 0, always masked: its block (the first of the first non-empty section) may be
        # full, and a full block's mask keeps every pair, so this is exact either way.
        acc, m_i, l_i, _ = carry
        u0, _, _, blk = sections[-1]
        j = blk(u0)
        for u0, u1, _, blk in reversed(sections[:-1]):
          j = jnp.where(u1 > u0, blk(u0), j)
        slot = slot_of(0)
        kv_vecs = kv_vecs_of(slot)
        s, = _dots_nt(st, [(qs, k_smem.at[slot])], between=sched_sync)
        plgpu.barrier_arrive(k_free.at[slot])
        p16, m_new, l_new, _ = softmax_update(apply_mask(s, j, kv_vecs), m_i, l_i, True)
        end_softmax(0)
        return acc, m_new, l_new, p16

      def step(t, carry, masked, blk, s_off=None, j=None):
        """Step t; s_off: None, or the half of the block that its S covers (`half_steps`);
        j: the block, if known."""
        acc, m_i, l_i, p_prev = carry
        slot, prev = slot_of(t), slot_of(t - 1)
        if masked:
          j = blk(t) if j is None else j
          kv_vecs = kv_vecs_of(slot)

        def softmax_of(s):
          plgpu.barrier_arrive(k_free.at[slot])
          if masked:
            s = apply_mask(s, j, kv_vecs, 0 if s_off is None else s_off)
          return softmax_update(s, m_i, l_i, masked)

        kb, vb = k_of(slot, s_off), v_smem.at[prev]
        cols = bkv if s_off is None else half
        if st.interpret:   # the same order, with the helpers' jnp products
          s, = _dots_nt(st, [(qs, kb)], between=sched_sync)
          p16, m_new, l_new, alpha = softmax_of(s)
          acc, = _mma_acc(st, (acc,), [(p_prev, vb)])
        else:
          def fn(refs):
            acc_ref, s_ref, p_ref, m_ref, l_ref, a_ref = refs
            plgpu.wgmma(s_ref, qs, plgpu.transpose_ref(kb, (1, 0)))
            plgpu.wgmma(acc_ref, p_prev, vb)
            sched_sync()
            # S_t has landed (P_{t-1} V_{t-1} may still run): its softmax overlaps the product
            outs = softmax_of(plgpu.wgmma_accumulator_load(s_ref, wait_n=1))
            for r, x in zip((p_ref, m_ref, l_ref, a_ref), outs):
              r[...] = x
          zero_s = _cast(st, jnp.zeros((bq, cols), jnp.float32), "WGMMA")
          # the P state starts as the previous P where the shapes agree (as before half steps)
          p_init = (p_prev if p_prev.shape[1] == cols
                    else _cast(st, jnp.zeros((bq, cols), dtype), "WGMMA"))
          acc, _, p16, m_new, l_new, alpha = pl.run_state(fn)(
              (plgpu.ACC.init(acc), plgpu.ACC.init(zero_s), p_init, m_i, l_i, m_i))
        if cfg.rescale_threshold:
          acc = _rescale_moved(st, acc, alpha)
        else:
          acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        plgpu.barrier_arrive(v_free.at[prev])
        end_softmax(t)
        return acc, m_new, l_new, p16

      def last(carry, pv_off=None):   # P_{n-1} V_{n-1}
        acc, m_i, l_i, p_prev = carry
        slot = slot_of(n - 1)
        acc, = _mma_acc(st, (acc,), [(p_prev, v_of(slot, pv_off))])
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, m_i, l_i, p_prev

      carry = (acc, m_i, l_i, p0)
      carry = lax.cond(n > 0, first, lambda c: c, carry)
      if not half_steps:
        carry = _walk([(jnp.maximum(u0, 1), u1, masked, blk)
                       for u0, u1, masked, blk in sections], step, carry)
        carry = lax.cond(n > 0, last, lambda c: c, carry)
        return carry[:3]

      n_loop = jnp.where(h_last, n - 1, n)   # the loop's steps: [1, n_loop)
      carry = _walk([(jnp.maximum(u0, 1), jnp.minimum(u1, n_loop), masked, blk)
                     for u0, u1, masked, blk in sections], step, carry)

      def half_last(carry):   # the last step on half its block, then its P V
        carry = step(n - 1, carry, True, None, s_off=off_last, j=j_last)
        return last(carry, pv_off=off_last)[:3]

      def whole(carry):
        return lax.cond(n > 0, last, lambda c: c, carry)[:3]
      return lax.cond(h_last, half_last, whole, carry)

    def consume(b, h, r0, n, sections, qs, qside_bufs, base, sync_per_tile: bool):
      """A consumer's part of one tile, after its Q (`qs`, row side values `qside_bufs`) has
      arrived: the online softmax over the tile's n KV steps, then out (staged through `qs`,
      whose Q is dead by then) and lse stored by TMA - issued, not awaited.

      base: None (the CTA's only tile: ring step = t) or the ring steps of the CTA's earlier
      tiles (persistent: ring step = base + t). sync_per_tile: the extra schedule-barrier
      round of each consumer (before consumer 1's loop, after consumer 0's) around this tile;
      False where the caller does it once per CTA (`cfg.persistent_sync_per_tile`)."""
      q_base = r0 + wg * bq
      ring = (lambda t: t) if base is None else (lambda t: t + base)
      # Loop-invariant, in registers (WGMMA row layout: 2 values per thread).
      q_vecs = [_load_vec(st, sm, "ROW") for sm in qside_bufs]
      m_i = _cast(st, jnp.full((bq,), _NEG_INF, jnp.float32), "ROW")
      l_i = _cast(st, jnp.full((bq,), 0.0, jnp.float32), "ROW")
      acc = _cast(st, jnp.full((bq, D), 0.0, jnp.float32), "WGMMA")

      @pl.when(n > 0)
      def _():
        plgpu.barrier_wait(k_bar.at[0 if base is None else lax.rem(base, stages)])

      if sync_per_tile:
        pl.when(wg == 1)(sched_sync)

      def apply_mask(s, j, kv_vecs, off=0):
        """Raw scores of KV block j (its keys from `off` on) -> -inf where the tile's mask drops
        the pair."""
        rows = _iota(st, s.shape, 0)
        cols = _iota(st, s.shape, 1)
        kv_idx = cols + j * bkv if isinstance(off, int) and off == 0 else cols + (j * bkv + off)
        keep = _tile_keep(st, b, h, s.shape, 0, rows + (st.q_off + q_base),
                          kv_idx + st.kv_off, kv_idx, q_vecs, kv_vecs)
        return s if keep is None else jnp.where(keep, s, _NEG_INF)

      def step(t, carry, masked, blk):
        acc, m_i, l_i = carry
        slot = lax.rem(ring(t), stages)
        if masked:
          j = blk(t)
          # The block's KV side values share the K slot (and its barrier, already waited
          # on): read them before K's "free" arrival lets the producer overwrite the slot.
          kv_vecs = [_load_vec(st, sm.at[slot], "COL") for sm in kvside_smem]

        s, = _dots_nt(st, [(qs, k_smem.at[slot])], between=sched_sync)
        plgpu.barrier_arrive(k_free.at[slot])
        if masked:
          s = apply_mask(s, j, kv_vecs)
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
            plgpu.barrier_wait(k_bar.at[lax.rem(ring(nxt), stages)])
        acc, = _mma_acc(st, (acc,), [(p16, v_smem.at[slot])], after_issue=wait_next_k)
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, m_new, l_i

      if overlap:
        acc, m_i, l_i = overlapped_walk(qs, n, sections, ring, acc, m_i, l_i, apply_mask,
                                        q_base)
      else:
        acc, m_i, l_i = _walk(sections, step, (acc, m_i, l_i))
      if sync_per_tile:
        pl.when(wg == 0)(sched_sync)

      empty = l_i == 0.0
      l_safe = jnp.where(empty, 1.0, l_i)
      out = acc * lax.broadcast_in_dim(1.0 / l_safe, acc.shape, [0])
      qs[...] = out.astype(dtype)
      lse_smem.at[wg][...] = jnp.where(empty, _NEG_INF, m_i + jnp.log(l_safe) * LOG2E)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qs, o_ref.at[b, pl.ds(q_base, bq), h])
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(q_base, bq)])

    def load_q(b, h, q_base, i):
      """Q rows [q_base, q_base + bq) of (b, h) and their side values -> Q buffer i."""
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_base, bq), h], q_smem.at[i], q_bar.at[i])
      # this consumer's row side values (segment ids) ride on the Q barrier
      for ref, sm, hb in zip(qside_refs, qside_smem, q_sides):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), pl.ds(q_base, bq)], sm.at[i],
                                q_bar.at[i])

    def load_k(b, kvh, j, slot):
      plgpu.copy_gmem_to_smem(k_ref.at[b, pl.ds(j * bkv, bkv), kvh], k_smem.at[slot],
                              k_bar.at[slot])
      # the block's KV side values: same slot index, same barrier (one arrival each)
      for ref, sm, hb in zip(kvside_refs, kvside_smem, kv_sides):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), pl.ds(j * bkv, bkv)],
                                sm.at[slot], k_bar.at[slot])

    def load_v(b, kvh, j, slot):
      plgpu.copy_gmem_to_smem(v_ref.at[b, pl.ds(j * bkv, bkv), kvh], v_smem.at[slot],
                              v_bar.at[slot])

    def kv_head(h):
      return lax.div(h, jnp.asarray(G, h.dtype))

    def load_step(b, kvh, j, slot, wait):   # one ring step of the producer
      _wait_if(wait, k_free.at[slot])
      load_k(b, kvh, j, slot)
      _wait_if(wait, v_free.at[slot])
      load_v(b, kvh, j, slot)

    if persistent:
      first, consumer_loop, producer = _persistent_schedule(
          st, items, n_ctas, lambda w: _fwd_work_item(st, w, n_tiles),
          (counter_ref, items_smem, item_bar, item_free) if dynamic else None)

      @pl.when(wg < 2)
      def _consumer_persistent():
        plgpu.set_max_registers(cfg.consumer_registers, action="increase")

        def prefetch_q(bhc, buf):   # Q of work item (b, h, ci) -> this consumer's buffer
          b, h, ci = bhc
          load_q(b, h, ci * (2 * bq) + wg * bq, buf * 2 + wg)

        def tile(p, bhc, base, following):   # local tile p: work item bhc (see schedule)
          buf = lax.rem(p, 2)
          b, h, ci = bhc
          r0, n, sections, _ = plan(b, h, ci)
          # The other buffer held tile p - 1's Q, then its out: its O / lse stores (issued at
          # the end of tile p - 1) must have read SMEM before the prefetch overwrites it.
          _prefetch_next(following, lambda nxt: prefetch_q(nxt, 1 - buf))
          i = buf * 2 + wg
          plgpu.barrier_wait(q_bar.at[i])
          consume(b, h, r0, n, sections, q_smem.at[i], [sm.at[i] for sm in qside_smem], base,
                  sync_per_tile=cfg.persistent_sync_per_tile)
          return base + n

        prefetch_q(first, 0)
        if not cfg.persistent_sync_per_tile:
          pl.when(wg == 1)(sched_sync)
        consumer_loop(tile)
        if not cfg.persistent_sync_per_tile:
          pl.when(wg == 0)(sched_sync)
        plgpu.wait_smem_to_gmem(0)

      @pl.when(wg == 2)
      def _producer_persistent():
        plgpu.set_max_registers(cfg.producer_registers, action="decrease")
        producer(lambda bhc, cnt: _ring_tile(bhc, cnt, plan, kv_head, stages, sparse,
                                             load_step), stages, (k_free, v_free))
      return

    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    ci = lax.axis_index("q_seq")
    if st.causal:  # longest rows first
      ci = (n_tiles - 1) - ci
    r0, n, sections, lo = plan(b, h, ci)

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(cfg.consumer_registers, action="increase")
      load_q(b, h, r0 + wg * bq, wg)
      plgpu.barrier_wait(q_bar.at[wg])
      consume(b, h, r0, n, sections, q_smem.at[wg], [sm.at[wg] for sm in qside_smem], None,
              sync_per_tile=True)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(cfg.producer_registers, action="decrease")
      _ring_producer(n, sections, lo, stages, sparse,
                     functools.partial(load_step, b, kv_head(h)), (k_free, v_free))

  tr = _smem_transforms(D, dtype)
  qbufs = 2 if persistent else 1   # persistent: Q (+ row side values) double-buffered
  scratch = (
      plgpu.SMEM((2 * qbufs, bq, D), dtype, transforms=tr),   # index buf * 2 + consumer
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
      # lse staging, one per consumer (persistent too: the store of a tile has read it by the
      # start of the next tile, see above)
      plgpu.SMEM((2, bq), jnp.float32),
      # One arrival per TMA copy signalled on the barrier: Q (+ its row side values),
      # K (+ the block's side values).
      plgpu.Barrier(num_arrivals=1 + nqs, num_barriers=2 * qbufs),
      plgpu.Barrier(num_arrivals=1 + nks, num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2),
  )
  scratch = scratch + tuple(plgpu.SMEM((2 * qbufs, bq), jnp.int32) for _ in range(nqs)) + tuple(
      plgpu.SMEM((stages, bkv), jnp.int32) for _ in range(nks))
  qside, kvside = _side_operands(st, seg, sp)
  operands = (q, k, v) + qside + kvside
  if segs:
    operands = operands + (_q_tile_kv_table(st, seg, 2 * bq, bkv),)
  if sparse:
    operands = operands + tuple(sp[0])
  out_type = (jax.ShapeDtypeStruct((st.B, st.Tp, st.N, D), dtype),
              jax.ShapeDtypeStruct((st.B, st.N, st.Tp), jnp.float32))
  if persistent:
    grid, names = (n_ctas,), ("cta",)
  else:
    grid, names = _grid(st, st.N, n_tiles, "q_seq")
  if dynamic:   # the work items' handoff slots and barriers (see `_dynamic_items`)
    scratch = scratch + (plgpu.SMEM((2,), jnp.int32), plgpu.Barrier(num_barriers=2),
                         plgpu.Barrier(num_arrivals=2, num_barriers=2))
  if counter:
    return _kernel_with_ref(kernel, operands, jnp.zeros((1,), jnp.int32), out_type, scratch,
                            grid, names, _compiler_params(st.cfg))
  return plgpu.kernel(
      kernel, out_type=out_type, scratch_types=scratch,
      grid=grid, grid_names=names,
      num_threads=3, thread_name="wg", compiler_params=_compiler_params(st.cfg),
      **_interpret_arg(st))(*operands)


# --------------------------------------------------------------------------------------------
# Backward: dQ kernel (grid over query tiles).
# --------------------------------------------------------------------------------------------
def _dq_call(st: _Static, q, k, v, do, out, lse2, dlse2=None, seg=None, sp=None):
  """-> (dq, delta): delta [B, N, Tp] f32 = rowsum(do * out) - dlse2 * LOG2E, computed from
  the O / dO tiles the kernel loads anyway (no separate pass over O and dO in HBM); the dK/dV
  kernel, launched after, reads it.

  Non-persistent: one CTA per (head, q tile, batch). Persistent (`cfg.bwd_persistent`, see
  `_dq_persistent`): `n_ctas` CTAs, CTA `cta` runs the work items w = cta + k * n_ctas (local
  tiles k = 0, 1, ...; the forward's `_fwd_work_item` order, which is this grid's) in one loop
  per warpgroup. Buffers and barrier phases across tiles:
  * K/V ring: as in the persistent forward - ring step g = the CTA's earlier tiles' steps +
    t, slot g % stages; the producer waits a slot's "free" barrier only for g >= stages and
    `_drain`s once at the end; a tile with n = 0 steps touches no ring barrier.
  * Per-tile inputs: Q and dO double-buffered per consumer (index buf * 2 + wg, buf = k % 2;
    dQ is staged through the tile's Q buffer as before); O, lse, dlse and the row side values
    single-buffered: they are read into registers at the start of the tile (delta, the row
    vectors). The next tile's loads are all issued at the end of the tile's first KV step
    (after the loop where n = 0), i.e. after this tile's q_bar wait, so one barrier per
    consumer (q_bar[wg]) suffices: each phase has one batch of loads in flight and is waited
    once, at the start of its tile.
  * Stores: delta is staged in the lse slot (lse is in registers by then) and dQ in the Q
    buffer, both TMA-stored without waiting. The prefetch issued in the first step of tile k
    first does `wait_smem_to_gmem(0, wait_read_only=True)`: tile k - 1's dQ store (the Q
    buffer the prefetch overwrites) and tile k's delta store (the lse slot) have read SMEM by
    then - both were issued at least one KV step earlier, so the wait is normally free. All
    stores are awaited at the end of the CTA.
  Shared memory: 4 Q + 4 dO + 2 O tiles + the ring (D=128, 2 stages: 224 KiB of tiles); the
  small vectors share one f32 allocation and the side values one int32 allocation (Mosaic
  rounds every allocation up to 1 KiB), and no reduction scratch is reserved (the kernel's
  only reduction, delta's row sum, stays within a warp). See `_dq_smem_bytes`.
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  D, dtype, G = st.D, st.dtype, st.G
  n_tiles = st.Tp // (2 * bq)
  c = st.c
  segs, sparse = st.segments, st.sparse
  q_sides, kv_sides = st.q_sides, st.kv_sides
  nqs, nks = len(q_sides), len(kv_sides)
  has_dlse = dlse2 is not None
  itemsize = jnp.dtype(dtype).itemsize
  persistent = _dq_persistent(cfg, D, itemsize, nqs, nks, has_dlse)
  # bwd_schedule_barrier: the consumers ping-pong (see HopperConfig); both walk the tile's n
  # KV steps, so with 2 rounds per step and, per tile, one before consumer 1's walk and one
  # after consumer 0's, the rounds pair up (zero-step tiles included).
  ping_pong = cfg.bwd_schedule_barrier
  items = st.B * st.N * n_tiles
  n_ctas = _persistent_ctas(cfg, items) if persistent else None
  dynamic = persistent and cfg.persistent_dynamic
  counter = dynamic and not st.interpret   # the atomic's GMEM counter (an operand)
  smem = _dq_smem_bytes(cfg, D, itemsize, q_sides=nqs, kv_sides=nks, persistent=persistent,
                        dlse=has_dlse)
  if smem > _SMEM_LIMIT and not st.interpret:
    raise ValueError(f"the dQ kernel needs ~{smem} bytes of shared memory for head_dim {D} "
                     f"(limit {_SMEM_LIMIT}) with {cfg}; use fewer bwd_stages")

  def kernel(*refs):
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, o_ref, lse_ref = (next(it) for _ in range(6))
    dlse_ref = next(it) if has_dlse else None
    qside_refs = [next(it) for _ in range(nqs)]
    kvside_refs = [next(it) for _ in range(nks)]
    rng_ref = next(it) if segs else None
    lists = tuple(next(it) for _ in range(4)) if sparse else None
    counter_ref = next(it) if counter else None
    dq_ref, delta_ref = next(it), next(it)
    if persistent:
      (q_smem, do_smem, o_smem, vec_smem, k_smem, v_smem, q_bar, kv_bar,
       kv_free) = (next(it) for _ in range(9))
      sched = next(it) if ping_pong else None
      side_smem = next(it) if nqs + nks else None
      if dynamic:   # the item slots: 2 floats of the f32 buffer's last row (see scratch)
        item_bar, item_free = next(it), next(it)
        items_smem = vec_smem.at[1 + has_dlse, 0, pl.ds(0, 2)]
      # [0, wg]: lse, then delta's staging; [1, wg]: dlse
      lse_buf = lambda i: vec_smem.at[0, i]
      delta_buf = lse_buf
      dlse_buf = lambda i: vec_smem.at[1, i]
      # int32 rows of 64: q side s of consumer i at s * 2 + i, kv side s of slot at
      # 2 * nqs + s * stages + slot
      qside_buf = lambda s, i: side_smem.at[s * 2 + i]
      kvside_buf = lambda s, slot: side_smem.at[2 * nqs + s * stages + slot]
    else:
      (q_smem, do_smem, o_smem, lse_smem, delta_smem, dlse_smem, k_smem,
       v_smem, q_bar, kv_bar, kv_free) = (next(it) for _ in range(11))
      sched = next(it) if ping_pong else None
      qside_smem = [next(it) for _ in range(nqs)]
      kvside_smem = [next(it) for _ in range(nks)]
      lse_buf = lambda i: lse_smem.at[i]
      delta_buf = lambda i: delta_smem.at[i]
      dlse_buf = lambda i: dlse_smem.at[i]
      qside_buf = lambda s, i: qside_smem[s].at[i]
      kvside_buf = lambda s, slot: kvside_smem[s].at[slot]

    def plan(b, h, ci):
      """Query tile ci of (b, h): (first row, KV steps n, `_walk` sections, first block of a
      range; None for lists)."""
      r0 = ci * (2 * bq)
      if sparse:   # each listed 128-key block is 128 // bkv steps
        n, sections = _list_walk(lists, b if st.Bm > 1 else 0, h if st.Hm > 1 else 0, ci,
                                 _SPARSE_BLOCK // bkv)
        return r0, n, sections, None
      if segs:
        lo, flo, fhi, hi = _read_ranges(rng_ref, b, ci)
      else:
        lo, flo, fhi, hi = _kv_ranges(st, r0, 2 * bq, bkv)
      n, sections = _range_walk(lo, flo, fhi, hi)
      return r0, n, sections, lo

    def load_tile(b, h, q_base, i):
      """This consumer's inputs for rows [q_base, q_base + bq) of (b, h): Q, dO -> buffer i,
      O, lse (+ dlse) (+ row side values) -> its own buffers; all on q_bar[wg]."""
      rows_sl = (b, pl.ds(q_base, bq), h)
      vec_sl = (b, h, pl.ds(q_base, bq))
      bar = q_bar.at[wg]
      plgpu.copy_gmem_to_smem(q_ref.at[rows_sl], q_smem.at[i], bar)
      plgpu.copy_gmem_to_smem(do_ref.at[rows_sl], do_smem.at[i], bar)
      plgpu.copy_gmem_to_smem(o_ref.at[rows_sl], o_smem.at[wg], bar)
      plgpu.copy_gmem_to_smem(lse_ref.at[vec_sl], lse_buf(wg), bar)
      if has_dlse:
        plgpu.copy_gmem_to_smem(dlse_ref.at[vec_sl], dlse_buf(wg), bar)
      for s, (ref, hb) in enumerate(zip(qside_refs, q_sides)):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), pl.ds(q_base, bq)], qside_buf(s, wg),
                                bar)

    sched_sync = functools.partial(_schedule_round, sched)

    def consume(b, h, q_base, n, sections, qs, dos, base, prefetch):
      """A consumer's part of one tile (its rows [q_base, q_base + bq)), after its inputs
      arrived: delta (stored by TMA, not awaited), the dQ loop over the tile's n KV steps, dQ
      staged through `qs` (Q is dead by then) and TMA-stored - issued, not awaited.

      base: None (the CTA's only tile: ring step = t) or the ring steps of the CTA's earlier
      tiles (persistent). prefetch: None, or what to run once per tile at the end of the
      first KV step (after the loop if n = 0): the next tile's loads (persistent)."""
      ring = (lambda t: t) if base is None else (lambda t: t + base)
      rows_sl = (b, pl.ds(q_base, bq), h)
      vec_sl = (b, h, pl.ds(q_base, bq))
      lse = _load_vec(st, lse_buf(wg), "ROW")
      # delta before the loop, while the dQ accumulator is not live yet (register headroom).
      do_f = _load_vec(st, dos, "WGMMA").astype(jnp.float32)
      o_f = _load_vec(st, o_smem.at[wg], "WGMMA").astype(jnp.float32)
      dlt = jnp.sum(do_f * o_f, axis=1)
      if has_dlse:   # d lse / d s = p folds into delta (ds = p * (dp - delta + dlse))
        dlt = dlt - _load_vec(st, dlse_buf(wg), "ROW") * LOG2E
      # The dK/dV kernel's input; the store overlaps the loop (awaited at the end).
      delta_buf(wg)[...] = dlt
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(delta_buf(wg), delta_ref.at[vec_sl])
      q_vecs = [_load_vec(st, qside_buf(s, wg), "ROW") for s in range(nqs)]
      dq = _cast(st, jnp.full((bq, D), 0.0, jnp.float32), "WGMMA")

      def step(t, dq, masked, blk):
        slot = lax.rem(ring(t), stages)
        if masked:
          j = blk(t)
        plgpu.barrier_wait(kv_bar.at[slot])
        if masked:
          kv_vecs = [_load_vec(st, kvside_buf(s, slot), "COL") for s in range(nks)]

        s, dp = _dots_nt(st, [(qs, k_smem.at[slot]), (dos, v_smem.at[slot])],
                         between=sched_sync)
        p = jnp.exp2(s * c - lax.broadcast_in_dim(lse, s.shape, [0]))
        if masked:
          rows = _iota(st, (bq, bkv), 0)
          cols = _iota(st, (bq, bkv), 1)
          kv_idx = cols + j * bkv
          keep = _tile_keep(st, b, h, (bq, bkv), 0, rows + (st.q_off + q_base),
                            kv_idx + st.kv_off, kv_idx, q_vecs, kv_vecs)
          if keep is not None:
            p = jnp.where(keep, p, 0.0)
        ds = p * (dp - lax.broadcast_in_dim(dlt, dp.shape, [0]))
        ds16 = ds.astype(dtype)
        sched_sync()

        dq, = _mma_acc(st, (dq,), [(ds16, k_smem.at[slot])])
        plgpu.barrier_arrive(kv_free.at[slot])
        if prefetch is not None:
          pl.when(t == 0)(prefetch)
        return dq

      if ping_pong:
        pl.when(wg == 1)(sched_sync)
      dq = _walk(sections, step, dq)
      if ping_pong:
        pl.when(wg == 0)(sched_sync)
      if prefetch is not None:
        pl.when(n == 0)(prefetch)
      qs[...] = (dq * st.scale).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qs, dq_ref.at[rows_sl])

    def load_kv(b, kvh, j, slot):
      sl = (b, pl.ds(j * bkv, bkv), kvh)
      plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[slot], kv_bar.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], kv_bar.at[slot])
      for s, (ref, hb) in enumerate(zip(kvside_refs, kv_sides)):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), pl.ds(j * bkv, bkv)],
                                kvside_buf(s, slot), kv_bar.at[slot])

    def kv_head(h):
      return lax.div(h, jnp.asarray(G, h.dtype))

    def load_step(b, kvh, j, slot, wait):   # one ring step of the producer
      _wait_if(wait, kv_free.at[slot])
      load_kv(b, kvh, j, slot)

    # `wg` (this warpgroup) is bound in each branch below, where the non-persistent kernel
    # always read it (the closures above see it when called).
    if persistent:
      wg = lax.axis_index("wg")
      first, consumer_loop, producer = _persistent_schedule(
          st, items, n_ctas, lambda w: _fwd_work_item(st, w, n_tiles),
          (counter_ref, items_smem, item_bar, item_free) if dynamic else None)

      @pl.when(wg < 2)
      def _consumer_persistent():
        plgpu.set_max_registers(cfg.consumer_registers, action="increase")

        def issue(bhc, buf):   # the inputs of work item (b, h, ci) -> Q / dO buffer `buf`
          b, h, ci = bhc
          load_tile(b, h, ci * (2 * bq) + wg * bq, buf * 2 + wg)

        def tile(p, bhc, base, following):   # local tile p: work item bhc (see schedule)
          buf = lax.rem(p, 2)
          b, h, ci = bhc
          r0, n, sections, _ = plan(b, h, ci)
          plgpu.barrier_wait(q_bar.at[wg])

          def prefetch():
            # Tile p - 1's dQ store (from the Q buffer about to be overwritten) and this
            # tile's delta store (from the lse slot) must have read SMEM.
            _prefetch_next(following, lambda nxt: issue(nxt, 1 - buf))
          i = buf * 2 + wg
          consume(b, h, r0 + wg * bq, n, sections, q_smem.at[i], do_smem.at[i], base,
                  prefetch)
          return base + n

        issue(first, 0)
        consumer_loop(tile)
        plgpu.wait_smem_to_gmem(0)

      @pl.when(wg == 2)
      def _producer_persistent():
        plgpu.set_max_registers(cfg.producer_registers, action="decrease")
        producer(lambda bhc, cnt: _ring_tile(bhc, cnt, plan, kv_head, stages, sparse,
                                             load_step), stages, (kv_free,))
      return

    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    ci = lax.axis_index("q_seq")
    if st.causal:   # longest rows first
      ci = (n_tiles - 1) - ci
    wg = lax.axis_index("wg")
    r0, n, sections, lo = plan(b, h, ci)

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(cfg.consumer_registers, action="increase")
      q_base = r0 + wg * bq
      load_tile(b, h, q_base, wg)
      plgpu.barrier_wait(q_bar.at[wg])
      consume(b, h, q_base, n, sections, q_smem.at[wg], do_smem.at[wg], None, None)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(cfg.producer_registers, action="decrease")
      _ring_producer(n, sections, lo, stages, sparse,
                     functools.partial(load_step, b, kv_head(h)), (kv_free,))

  tr = _smem_transforms(D, dtype)
  # One arrival per TMA copy: Q, dO, O, lse (+ dlse) (+ row side values).
  q_barrier = plgpu.Barrier(num_arrivals=4 + has_dlse + nqs, num_barriers=2)
  ring = (plgpu.SMEM((stages, bkv, D), dtype, transforms=tr),
          plgpu.SMEM((stages, bkv, D), dtype, transforms=tr))
  ring_barriers = (plgpu.Barrier(num_arrivals=2 + nks, num_barriers=stages),
                   plgpu.Barrier(num_arrivals=2, num_barriers=stages))
  if ping_pong:   # the consumers' schedule barrier
    ring_barriers = ring_barriers + (plgpu.Barrier(num_arrivals=2),)
  if persistent:
    scratch = (
        plgpu.SMEM((4, bq, D), dtype, transforms=tr),     # Q, then dQ: index buf * 2 + wg
        plgpu.SMEM((4, bq, D), dtype, transforms=tr),     # dO: index buf * 2 + wg
        plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # O
        # lse (then delta), dlse; with the dynamic scheduler one more row, whose first two
        # floats are its item slots (`_dynamic_items`): a buffer of their own would cost another
        # KiB of shared memory, which the documents calls do not have
        plgpu.SMEM((1 + has_dlse + dynamic, 2, bq), jnp.float32),
    ) + ring + (q_barrier,) + ring_barriers
    if nqs + nks:
      scratch = scratch + (plgpu.SMEM((2 * nqs + stages * nks, bkv), jnp.int32),)
    if dynamic:   # the work items' handoff barriers (see `_dynamic_items`)
      scratch = scratch + (plgpu.Barrier(num_barriers=2),
                           plgpu.Barrier(num_arrivals=2, num_barriers=2))
  else:
    scratch = (
        plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # Q, then dQ for the output copy
        plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # dO
        plgpu.SMEM((2, bq, D), dtype, transforms=tr),     # O
        plgpu.SMEM((2, bq), jnp.float32),                 # lse
        plgpu.SMEM((2, bq), jnp.float32),                 # delta (output staging)
        plgpu.SMEM((2, bq), jnp.float32),                 # dlse (unused without it)
    ) + ring + (q_barrier,) + ring_barriers
    scratch = scratch + tuple(plgpu.SMEM((2, bq), jnp.int32) for _ in range(nqs)) + tuple(
        plgpu.SMEM((stages, bkv), jnp.int32) for _ in range(nks))
  # O may come as f32 (residual VJP): the kernel stages it in q's dtype, as the forward wrote it.
  operands = (q, k, v, do, out.astype(dtype), lse2)
  if has_dlse:
    operands = operands + (dlse2.astype(jnp.float32),)
  qside, kvside = _side_operands(st, seg, sp)
  operands = operands + qside + kvside
  if segs:
    operands = operands + (_q_tile_kv_table(st, seg, 2 * bq, bkv),)
  if sparse:
    operands = operands + tuple(sp[0])
  out_type = (jax.ShapeDtypeStruct((st.B, st.Tp, st.N, D), dtype),
              jax.ShapeDtypeStruct((st.B, st.N, st.Tp), jnp.float32))
  if persistent:
    grid, names = (n_ctas,), ("cta",)
    # no reduction scratch: delta's row sum is within a warp (see the docstring)
    params = _compiler_params(st.cfg, reduction_scratch_bytes=0)
  else:
    grid, names = _grid(st, st.N, n_tiles, "q_seq")
    params = _compiler_params(st.cfg)
  if counter:
    return _kernel_with_ref(kernel, operands, jnp.zeros((1,), jnp.int32), out_type, scratch,
                            grid, names, params)
  return plgpu.kernel(
      kernel, out_type=out_type, scratch_types=scratch, grid=grid, grid_names=names,
      num_threads=3, thread_name="wg", compiler_params=params,
      **_interpret_arg(st))(*operands)


# --------------------------------------------------------------------------------------------
# Backward: dK/dV kernel (grid over KV tiles; loops over the GQA group's query heads).
# --------------------------------------------------------------------------------------------
def _dkv_call(st: _Static, q, k, v, do, lse2, delta, fused: bool = False, seg=None, sp=None):
  """dK, dV (and with `fused`, dQ too: returns (dk, dv, dq)).

  Non-persistent: one CTA per (KV head, KV tile, batch); each consumer holds bkv of the tile's
  keys (K, V in SMEM, dK / dV in registers) and walks the query blocks of the GQA group's
  heads, head by head, streamed by the producer through the Q / dO / lse / delta ring.

  Persistent (`cfg.dkv_persistent`, not fused; see `_dkv_persistent`): `n_ctas` CTAs loop over
  the (b, KV head, KV tile) work items (`_dkv_work_item`'s order) from the static
  split or the dynamic scheduler (`cfg.persistent_dynamic`), as the persistent forward does:
  * the ring counts steps over the whole CTA (`base`: the earlier items' steps), so the
    producer streams the next item's query blocks while the consumers finish the current one;
  * K / V (+ key side values) double-buffered per consumer (index buf * 2 + wg, buf = p % 2),
    one barrier per consumer (kv_bar[wg]): item p + 1's K / V are issued at the end of item
    p's first step (after the loop where it has none), i.e. after item p's wait, so each
    phase has one batch of loads in flight and is waited once, at the start of its item;
  * dK / dV are staged through the item's K / V buffer and TMA-stored without waiting; the
    prefetch that overwrites the other buffer first waits for item p - 1's stores to have
    read SMEM (`wait_smem_to_gmem(0, wait_read_only=True)`); all stores are awaited at the
    end of the CTA.

  Persistent fused (`cfg.fused_persistent`): the same item loop, with one K / V buffer per
  consumer (a second does not fit beside the dS^T and dQ tiles): the next item's K / V are
  loaded into it right after the item's final meeting (every product that reads K / V done),
  and dK / dV leave through the consumer's two dS^T tiles (bq columns each: at D = 128 dK,
  then dV once dK's stores have read SMEM); the next item's first step waits for those reads
  before its dS^T store. The pair barriers keep counting ring steps across items: the meeting
  and the next item's first step arrive on the same barrier, and neither consumer can arrive
  twice before the other has passed the meeting.

  fused: the step's query block also gets its dQ_blk = dS @ K: both consumers store their
  dS^T tile (bf16, double-buffered by step parity) into SMEM, and each computes half of
  dQ_blk's columns from both tiles (wgmma with a transposed A from SMEM) and adds it into an
  f32 sum in GMEM with a TMA reduce-add. 5 matrix products per block pair instead of the 7 of
  the two-kernel backward (no recomputation of S and dP in a dQ kernel). The dQ product of
  step t - 1 is issued with step t's dV / dK products, so a consumer never waits for the
  other's tile of the current step: before storing its step-t tile it waits for the other's
  end of step t - 1 (tile t - 1 stored, its dQ product of step t - 2 done reading the parity
  about to be rewritten), and arrives at its own end of step t after its dQ product (a
  barrier per parity). The consumers can thus drift up to about half a step apart, so that
  one's exponentials overlap the other's products; meeting on the current step's tiles kept
  them in lockstep, and the two-kernel backward measured as fast (thirteenth session,
  NOTES.md Hopper v15). The ring slot is released once dV / dK complete, before the dQ
  product is awaited; the last step's dQ follows the walk.
  """
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]
  cfg = st.cfg
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  D, dtype, G = st.D, st.dtype, st.G
  n_cta = st.Sp // (2 * bkv)
  c = st.c

  dq_cols = D // 2 if D >= 128 else D   # dQ columns computed by each consumer (D <= 128)
  dq_parts = D // dq_cols               # consumers that compute dQ columns
  segs, sparse = st.segments, st.sparse
  q_sides, kv_sides = st.q_sides, st.kv_sides
  nqs, nks = len(q_sides), len(kv_sides)
  if sparse and fused:
    raise NotImplementedError("the fused backward takes no block_sparsity")
  r = _SPARSE_BLOCK // bq   # kernel steps per listed query block
  # Both consumers walk the same query blocks (the same in_free phases), so the schedule
  # barrier's rounds pair up: 2 per step each, plus one before consumer 1's walk and one after
  # consumer 0's (per work item when persistent).
  ping_pong = cfg.bwd_schedule_barrier and not fused
  # consumers skip their steps with no kept pair (not under the ping-pong: its rounds pair the
  # two consumers' steps one to one)
  skip_halves = cfg.bwd_skip_empty_halves and not sparse and not ping_pong
  fused_persistent = fused and cfg.fused_persistent
  persistent = fused_persistent or (
      not fused and _dkv_persistent(cfg, D, jnp.dtype(dtype).itemsize, nqs, nks))
  items = st.B * st.K * n_cta
  n_ctas = _persistent_ctas(cfg, items) if persistent else None
  dynamic = persistent and cfg.persistent_dynamic
  counter = dynamic and not st.interpret   # the atomic's GMEM counter (an operand)

  def kernel(*refs):
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = (next(it) for _ in range(6))
    qside_refs = [next(it) for _ in range(nqs)]
    kvside_refs = [next(it) for _ in range(nks)]
    rng_ref = next(it) if segs else None
    lists = tuple(next(it) for _ in range(4)) if sparse else None
    counter_ref = next(it) if counter else None
    dqacc_ref = next(it) if fused else None   # the launch's Ref operand follows the arrays
    (dk_ref, dv_ref, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
     kv_bar, in_bar, in_free) = (next(it) for _ in range(11))
    if fused:
      ds_smem, dq_smem, pair = (next(it) for _ in range(3))
    sched = next(it) if ping_pong else None
    kvside_smem = [next(it) for _ in range(nks)]
    qside_smem = [next(it) for _ in range(nqs)]
    if dynamic:
      items_smem, item_bar, item_free = next(it), next(it), next(it)
    wg = lax.axis_index("wg")
    sched_sync = functools.partial(_schedule_round, sched)

    def plan(b, kvh, ci, consumer: bool = False):
      """KV tile ci of (b, kvh): (head_walk: query head g of the group -> (steps, `_walk`
      sections); steps of every head (None for lists); first block of a range (None for
      lists)). consumer: the sections of this consumer (`wg`), with its skipped steps."""
      if sparse:   # per-head lists when Hm == N
        bm = b if st.Bm > 1 else 0
        return (lambda g: _list_walk(lists, bm, kvh * G + g if st.Hm > 1 else 0, ci, r),
                None, None)
      if segs:   # query block ranges of the tile's two halves, precomputed (_seg_block_ranges)
        halves = [_read_ranges(rng_ref, b, 2 * ci + w) for w in range(2)]
        lo, flo, fhi, hi = _halves_to_tile(*halves)
      else:
        lo, flo, fhi, hi = _q_ranges(st, ci * (2 * bkv), 2 * bkv, bq)
      if consumer and skip_halves:
        if segs:   # wg is 0 or 1 here: no selects inside kernels
          own_lo, own_hi = (halves[0][x] + (halves[1][x] - halves[0][x]) * wg for x in (0, 3))
        else:
          own = _q_ranges(st, ci * (2 * bkv) + wg * bkv, bkv, bq)
          own_lo, own_hi = own[0], own[3]
        n, sections = _consumer_walk(lo, flo, fhi, hi, own_lo, own_hi)
      else:
        n, sections = _range_walk(lo, flo, fhi, hi)
      return (lambda g: (n, sections)), n, lo

    def kv_rows(b, kvh, ci):   # this consumer's keys of KV tile ci
      return (b, pl.ds(ci * (2 * bkv) + wg * bkv, bkv), kvh)

    def load_kv(b, kvh, ci, kb, z=0):
      """This consumer's K / V (+ key side values) of KV tile ci -> buffer kb, on kv_bar[wg]
      (z: an opaque zero, see `consume`)."""
      sl = kv_rows(b, kvh, ci)
      bar = kv_bar.at[wg + z]
      plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[kb], bar)
      plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[kb], bar)
      for ref, sm, hb in zip(kvside_refs, kvside_smem, kv_sides):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), sl[1]], sm.at[kb], bar)

    def consume(b, kvh, ci, kb, base, prefetch, after_meeting=None):
      """A consumer's part of work item (b, kvh, ci) once its K / V load is issued into
      buffer kb: the walk over the group's query blocks from ring step `base`, dK / dV staged
      through the K / V buffer and TMA-stored (not awaited) -> base + the item's steps.
      prefetch: None, or what to run once at the end of the item's first step (after the
      walk if it has none).
      fused: after_meeting(z): run once the final meeting has seen both consumers' products
      done, with an opaque zero z (the persistent kernel's next K / V load into this buffer;
      dK / dV then go out through the dS^T tiles). The next item's first step arrives on the
      barrier of the meeting again (both are "step end" in pair-barrier terms): each consumer
      still waits every phase of both barriers in order - the first step waits none (no
      previous dQ) and the second waits the first's - and neither can arrive twice before the
      other has seen the meeting, which it must pass first."""
      head_walk, _, _ = plan(b, kvh, ci, consumer=True)
      kv_base = ci * (2 * bkv) + wg * bkv
      # The item's first ring step, where the fused kernel has no previous dQ: a Python 0
      # when not persistent, as before the persistent kernel. A first version that compared
      # the non-persistent kernel's steps with the traced base (and added a zero offset to
      # them) failed to lower on jax 0.11.2 ("Shaped arrays must be represented by
      # ir.Values, got: 0"; seventeenth session, call 1); jax 0.10.2 lowered it.
      first = base if persistent else 0
      ks, vs = k_smem.at[kb], v_smem.at[kb]
      plgpu.barrier_wait(kv_bar.at[wg])
      # Rows of the transposed tiles (S^T, dP^T: [bkv, bq]) are this consumer's keys.
      kv_vecs = [_load_vec(st, sm.at[kb], "ROW") for sm in kvside_smem]
      zeros = _cast(st, jnp.full((bkv, D), 0.0, jnp.float32), "WGMMA")

      def dq_block(w, par, i, h, issued=None):
        """fused: consumer w's dQ columns [w*dq_cols, (w+1)*dq_cols) of query block i of head
        h, from both consumers' dS^T tiles in buffer par, reduce-added into the f32 sum (w: a
        static int, or traced). issued: compiled only, run once the dQ products are issued
        and all earlier ones (the step's dV / dK) have completed."""
        col0 = w * dq_cols
        dst = dqacc_ref.at[b, pl.ds(i * bq, bq), h, pl.ds(col0, dq_cols)]
        if st.interpret:
          # No transposed wgmma operand and no TMA reduce-add there: a jnp product of the
          # SMEM tiles and a read-modify-write of the f32 sum (the interpreter runs the grid's
          # CTAs one after another, and the two consumers own disjoint columns, so nothing
          # else writes these elements meanwhile).
          dq = sum(lax.dot_general(ds_smem.at[par, u][...],
                                   lax.dynamic_slice_in_dim(k_smem.at[u][...], col0, dq_cols, 1),
                                   (((0,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32) for u in range(2))
          dst[...] = dst[...] + dq
          return

        def dq_fn(acc_ref):
          z = _opaque_zero(st)   # K's descriptors computed here, not kept live (see below)
          for u in range(2):
            kb = k_smem.at[u + z]
            if dq_cols != D:
              kb = kb.at[:, pl.ds(col0, dq_cols)]
            plgpu.wgmma(acc_ref, plgpu.transpose_ref(ds_smem.at[par, u], (1, 0)), kb)
          if issued is not None:
            plgpu.wgmma_wait(2)   # the two dQ products (one group each) may still run
            issued()
          return acc_ref[...]
        dq = pl.run_scoped(dq_fn, plgpu.ACC((bq, dq_cols), jnp.float32))
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)   # the previous reduce read dq_smem
        dq_smem.at[w][...] = dq
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dq_smem.at[w], dst, reduction_op="add")

      def wait_other_end(t):
        """fused: until the other consumer has ended step t - 1 (its dS^T tile of
        step t - 1 in SMEM, its dQ product of step t - 2 done reading both tiles of step
        t - 2, i.e. the buffer step t writes)."""
        plgpu.barrier_wait(pair.at[lax.rem(t + 1, 2)])

      def previous_dq(t, i, h, release=None):
        """fused, after step t's dV / dK are issued (and `wait_other_end(t)`): this
        consumer's dQ columns of step t - 1 (block i, head h). release: compiled only, run as
        soon as the dV / dK products have completed (the dQ products still running)."""
        par = lax.rem(t + 1, 2)
        if dq_parts == 2:
          dq_block(wg, par, i, h, release)
        else:
          pl.when(wg == 0)(lambda: dq_block(0, par, i, h, release))
          if release is not None:
            @pl.when(wg != 0)
            def _():
              plgpu.wgmma_wait(0)
              release()

      def head(g, carry):
        h = kvh * G + g
        n_g, sections = head_walk(g)
        dk, dv, hbase, prev = carry   # hbase: ring step of this head's first block

        def skipped_step(u, carry, blk):
          """A step where none of this consumer's keys pairs with the query block: the ring
          slot waited and freed, no product of its own; fused: a zero dS^T tile for the dQ
          products (both consumers' read it), the previous step's dQ and the step's end as
          in `step`."""
          dk, dv, prev = carry
          t = hbase + u
          slot = lax.rem(t, stages)
          plgpu.barrier_wait(in_bar.at[slot])
          release = lambda: plgpu.barrier_arrive(in_free.at[slot])
          if fused:
            i = blk(u)
            pl.when(t > first)(lambda: wait_other_end(t))
            if fused_persistent:
              pl.when(t == first)(lambda: plgpu.wait_smem_to_gmem(0, wait_read_only=True))
            ds_smem.at[lax.rem(t, 2), wg][...] = _cast(
                st, jnp.full((bkv, bq), 0.0, jnp.float32), "WGMMA").astype(dtype)
            plgpu.commit_smem()
            early = not st.interpret
            pl.when(t > first)(lambda: previous_dq(t, *prev, release if early else None))
            return end_step(t, release, early, (dk, dv, (i, h)))
          return end_step(t, release, False, carry)

        def end_step(t, release, early, carry):
          """What every step ends with: the ring slot freed (early: only the item's first step
          here - later ones free it from `previous_dq` once their dV / dK products are done),
          the persistent kernel's prefetch, and (fused) this consumer's end of step t."""
          if early:
            pl.when(t == first)(release)
          else:
            release()
          if prefetch is not None:
            pl.when(t == base)(prefetch)
          if fused:
            plgpu.barrier_arrive(pair.at[lax.rem(t, 2)])
          return carry

        def step(u, carry, masked, blk):
          if masked == "skip":
            return skipped_step(u, carry, blk)
          dk, dv, prev = carry   # prev: (block, head) of the previous step (fused)
          t = hbase + u
          slot = lax.rem(t, stages)
          if masked or fused:   # fused: every step adds its dQ rows at block i
            i = blk(u)
          plgpu.barrier_wait(in_bar.at[slot])
          # K / V indexed by an opaque zero: Mosaic then builds their wgmma descriptors (8 per
          # operand) in the step instead of once before the walk, where ptxas kept them live
          # across it and spilled them (132-212 bytes; reloaded before every issue). No spills
          # with it; fwd+bwd +13% on the fused dense calls (thirteenth session, NOTES.md v16).
          z = _opaque_zero(st)
          kst, vst = k_smem.at[kb + z], v_smem.at[kb + z]

          sT, dpT = _dots_nt(st, [(kst, q_smem.at[slot]), (vst, do_smem.at[slot])],
                             between=sched_sync)
          lse = _load_vec(st, lse_smem.at[slot], "COL")
          pT = jnp.exp2(sT * c - lax.broadcast_in_dim(lse, sT.shape, [1]))
          if masked:
            # The query block's side values (read before in_free), and delta below, are
            # loaded where they are used rather than at the top of the step: each is 16
            # registers (COL layout of the transposed tile) next to dK, dV, P^T and dP^T.
            # Eighth session (ptxas): the documents dK/dV kernel's spills went from 312 bytes to
            # 0 (NOTES.md Hopper v10); fwd+bwd -0.2 to +4.3% in the 5 cells timed.
            q_vecs = [_load_vec(st, sm.at[slot], "COL") for sm in qside_smem]
            rows = _iota(st, (bkv, bq), 0)
            cols = _iota(st, (bkv, bq), 1)
            if not persistent:
              # The step's opaque zero in the indices too: LLVM then builds them in the step
              # instead of keeping per-thread index values live across the walk (the window
              # cell's fused kernel spilled 48 bytes without it, none with it; fwd+bwd
              # causal 4k +1.6-1.9%, window +0.7-1.5%, documents -0.7 to +0.5%: eighteenth
              # session, NOTES.md Hopper v21). Not in the persistent kernels: there it
              # spilled more (window 108 -> 180 bytes) and ran slower.
              rows, cols = rows + z, cols + z
            # Padded keys need no mask here: their dK / dV rows are sliced off.
            keep = _tile_keep(st, b, h, (bkv, bq), 1, cols + (st.q_off + i * bq),
                              rows + (st.kv_off + kv_base), None, q_vecs, kv_vecs)
            if keep is not None:
              pT = jnp.where(keep, pT, 0.0)
          dlt = _load_vec(st, delta_smem.at[slot], "COL")
          dsT = pT * (dpT - lax.broadcast_in_dim(dlt, dpT.shape, [1]))
          ds16 = dsT.astype(dtype)
          if fused:
            pl.when(t > first)(lambda: wait_other_end(t))
            if fused_persistent:   # the previous item's dK / dV stores read these tiles
              pl.when(t == first)(lambda: plgpu.wait_smem_to_gmem(0, wait_read_only=True))
            par = lax.rem(t, 2)    # dS^T tiles by step parity
            ds_smem.at[par, wg][...] = ds16
            plgpu.commit_smem()

          p16 = pT.astype(dtype)
          sched_sync()
          after_issue = None
          release = lambda: plgpu.barrier_arrive(in_free.at[slot])
          early = fused and not st.interpret   # no wgmma groups to wait on in interpret mode
          if fused:
            # Step t - 1's dQ runs with this step's dV / dK. Its tiles (parity t - 1) are
            # rewritten at step t + 1, after the writer has waited for this consumer's end of
            # step t, i.e. for this product to have read them. The ring slot is released as
            # soon as dV / dK have read it, not after the dQ product and its store.
            after_issue = lambda: pl.when(t > first)(
                lambda: previous_dq(t, *prev, release if early else None))
          dv, dk = _mma_acc(st, (dv, dk), [(p16, do_smem.at[slot]), (ds16, q_smem.at[slot])],
                            after_issue=after_issue)
          return end_step(t, release, early, (dk, dv, (i, h) if fused else prev))
        dk, dv, prev = _walk(sections, step, (dk, dv, prev))
        return dk, dv, hbase + n_g, prev

      if ping_pong:
        pl.when(wg == 1)(sched_sync)
      init = (zeros, zeros, base, (jnp.int32(0), jnp.int32(0)))
      if G == 1:
        dk, dv, end, prev = head(0, init)
      else:
        dk, dv, end, prev = lax.fori_loop(0, G, head, init)
      if ping_pong:
        pl.when(wg == 0)(sched_sync)
      if prefetch is not None:
        pl.when(end == base)(prefetch)
      if fused:   # the last step's dQ, then the final meeting as "step end"
        @pl.when(end > base)
        def _():
          wait_other_end(end)
          previous_dq(end, *prev)
        plgpu.barrier_arrive(pair.at[lax.rem(end, 2)])
        plgpu.barrier_wait(pair.at[lax.rem(end, 2)])
      # persistent fused: what follows the walk indexes its shared memory with an opaque zero
      # made here, so that LLVM computes those addresses here rather than hoisting them out of
      # the loop over items, where they would stay live across every walk (the window cell's
      # kernel spilled 144 bytes without it, against 48 non-persistent)
      ze = _opaque_zero(st) if fused_persistent else 0
      if after_meeting is not None:
        after_meeting(ze)
      sl = kv_rows(b, kvh, ci)
      if fused_persistent:
        # The K / V buffer is taking the next item's K / V already: dK / dV go out through
        # this consumer's two dS^T tiles (no product reads them after the meeting), bq columns
        # at a time - at D = 128 in two rounds (dK, then dV once dK's stores have read SMEM).
        # The next item's first step waits for the last round's reads before its dS^T store.
        pieces = [(x[:, c0:c0 + bq] if D > bq else x, ref, c0)
                  for x, ref in (((dk * st.scale).astype(dtype), dk_ref),
                                 (dv.astype(dtype), dv_ref))
                  for c0 in range(0, D, bq)]
        pl.when(end == base)(   # a zero-step item: no first step waited for the last stores
            lambda: plgpu.wait_smem_to_gmem(0, wait_read_only=True))
        for r in range(0, len(pieces), 2):
          if r:
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          for j, (x, _, _) in enumerate(pieces[r:r + 2]):
            ds_smem.at[j + ze, wg][...] = x
          plgpu.commit_smem()
          for j, (_, ref, c0) in enumerate(pieces[r:r + 2]):
            plgpu.copy_smem_to_gmem(ds_smem.at[j + ze, wg],
                                    ref.at[b, sl[1], kvh, pl.ds(c0, bq)] if D > bq else ref.at[sl])
        return end
      ks[...] = (dk * st.scale).astype(dtype)
      vs[...] = dv.astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(ks, dk_ref.at[sl])
      plgpu.copy_smem_to_gmem(vs, dv_ref.at[sl])
      return end

    def load_block(b, h, i, slot):
      rows = (b, pl.ds(i * bq, bq), h)
      vec = (b, h, pl.ds(i * bq, bq))
      plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], in_bar.at[slot])
      plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], in_bar.at[slot])
      plgpu.copy_gmem_to_smem(lse_ref.at[vec], lse_smem.at[slot], in_bar.at[slot])
      plgpu.copy_gmem_to_smem(delta_ref.at[vec], delta_smem.at[slot], in_bar.at[slot])
      for ref, sm, hb in zip(qside_refs, qside_smem, q_sides):
        plgpu.copy_gmem_to_smem(ref.at[_side_row(hb, b), pl.ds(i * bq, bq)], sm.at[slot],
                                in_bar.at[slot])

    def ring_tile(bhc, cnt):
      """The producer's loads of work item (b, kvh, ci) - the consumers' sequence: head by
      head, each head's query blocks in order - from ring step cnt (slot = step % stages; a
      slot's "free" barrier is waited from step `stages` on) -> cnt + the item's steps."""
      b, kvh, ci = bhc
      head_walk, n, lo = plan(b, kvh, ci)
      if sparse:
        def head_p(g, hbase):
          n_g, sections = head_walk(g)

          def sbody(u, carry, masked, blk):
            del masked
            t = hbase + u
            slot = lax.rem(t, stages)
            _wait_if(t >= stages, in_free.at[slot])
            load_block(b, kvh * G + g, blk(u), slot)
            return carry
          _walk(sections, sbody, None)
          return hbase + n_g
        return lax.fori_loop(0, G, head_p, cnt)

      n1 = jnp.maximum(n, 1)

      def body(t, carry):
        slot = lax.rem(cnt + t, stages)
        _wait_if(cnt + t >= stages, in_free.at[slot])
        load_block(b, kvh * G + lax.div(t, n1), lo + lax.rem(t, n1), slot)
        return carry
      lax.fori_loop(0, n * G, body, None)
      return cnt + n * G

    regs = cfg.fused_registers if fused else (cfg.consumer_registers, cfg.producer_registers)
    if persistent:
      first, consumer_loop, producer = _persistent_schedule(
          st, items, n_ctas, lambda w: _dkv_work_item(st, w, n_cta),
          (counter_ref, items_smem, item_bar, item_free) if dynamic else None)

      @pl.when(wg < 2)
      def _consumer_persistent():
        plgpu.set_max_registers(regs[0], action="increase")

        def tile(p, bhc, base, following):   # local item p: (b, kvh, ci) (see schedule)
          if fused:
            def next_kv(z):   # into the one K / V buffer, freed by the final meeting
              has_next, nxt = following()
              pl.when(has_next)(lambda: load_kv(*nxt, wg + z, z))
            return consume(*bhc, wg, base, None, after_meeting=next_kv)
          buf = lax.rem(p, 2)

          def prefetch():
            # item p - 1's dK / dV stores (from the buffer about to be overwritten) must have
            # read SMEM
            _prefetch_next(following, lambda nxt: load_kv(*nxt, (1 - buf) * 2 + wg))
          return consume(*bhc, buf * 2 + wg, base, prefetch)

        load_kv(*first, wg)
        consumer_loop(tile)
        plgpu.wait_smem_to_gmem(0)

      @pl.when(wg == 2)
      def _producer_persistent():
        plgpu.set_max_registers(regs[1], action="decrease")
        producer(ring_tile, stages, (in_free,))
      return

    bhc = (lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("kv_seq"))

    @pl.when(wg < 2)
    def _consumer():
      plgpu.set_max_registers(regs[0], action="increase")
      load_kv(*bhc, wg)
      consume(*bhc, wg, jnp.int32(0), None)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
      plgpu.set_max_registers(regs[1], action="decrease")
      total = ring_tile(bhc, jnp.int32(0))
      _drain(total, stages, (in_free,))

  tr = _smem_transforms(D, dtype)
  kv_bufs = 4 if persistent and not fused else 2   # index buf * 2 + wg (persistent) or wg
  scratch = (
      plgpu.SMEM((kv_bufs, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((kv_bufs, bkv, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq, D), dtype, transforms=tr),
      plgpu.SMEM((stages, bq), jnp.float32),
      plgpu.SMEM((stages, bq), jnp.float32),
      # One arrival per TMA copy: K, V (+ side values); Q, dO, lse, delta (+ side values).
      plgpu.Barrier(num_arrivals=2 + nks, num_barriers=2),
      plgpu.Barrier(num_arrivals=4 + nqs, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2, num_barriers=stages),
  )
  kv_type = jax.ShapeDtypeStruct((st.B, st.Sp, st.K, D), dtype)
  grid, names = _grid(st, st.K, n_cta, "kv_seq")
  if persistent:
    grid, names = (n_ctas,), ("cta",)
  # the dynamic scheduler's work item slots and handoff barriers (see `_dynamic_items`)
  item_scratch = (plgpu.SMEM((2,), jnp.int32), plgpu.Barrier(num_barriers=2),
                  plgpu.Barrier(num_arrivals=2, num_barriers=2)) if dynamic else ()
  side_scratch = tuple(plgpu.SMEM((kv_bufs, bkv), jnp.int32) for _ in range(nks)) + tuple(
      plgpu.SMEM((stages, bq), jnp.int32) for _ in range(nqs))
  qside, kvside = _side_operands(st, seg, sp)
  operands = (q, k, v, do, lse2, delta) + qside + kvside
  if segs:
    # per half tile (a consumer's keys): `plan` derives the tile's ranges from its two halves
    operands = operands + (_kv_tile_q_table(st, seg, bkv, bq),)
  if not fused:
    if ping_pong:
      scratch = scratch + (plgpu.Barrier(num_arrivals=2),)
    scratch = scratch + side_scratch + item_scratch
    if sparse:
      operands = operands + tuple(sp[1])
    params = _compiler_params(st.cfg)
    if counter:
      return _kernel_with_ref(kernel, operands, jnp.zeros((1,), jnp.int32),
                              (kv_type, kv_type), scratch, grid, names, params)
    return plgpu.kernel(
        kernel, out_type=(kv_type, kv_type), scratch_types=scratch, grid=grid,
        grid_names=names, num_threads=3, thread_name="wg",
        compiler_params=params, **_interpret_arg(st))(*operands)
  scratch = scratch + (
      plgpu.SMEM((2, 2, bkv, bq), dtype, transforms=_smem_transforms(bq, dtype)),
      plgpu.SMEM((2, bq, dq_cols), jnp.float32),
      plgpu.Barrier(num_arrivals=2, num_barriers=2),   # "end of step t" by parity
  ) + side_scratch + item_scratch
  if st.interpret and (st.masked_anything or segs) and not _interpret_flag_set():
    # Seen on jax 0.10.2: with masked steps (causal / window) XLA:CPU's concurrency-optimized
    # scheduler orders the interpreter's callbacks so that consumer 1 never starts while the
    # others wait for it; without that scheduler the same calls pass (with the race detector).
    raise NotImplementedError(
        "backward='fused' with a causal mask, window or segment ids hangs in interpret mode "
        f"under XLA:CPU's default scheduler: set XLA_FLAGS={INTERPRET_XLA_FLAG} before jax "
        "starts, or use backward='mosaic'")
  if st.interpret:
    # The interpreter takes no Ref operand (pl.kernel's operands have no GMEM memory space
    # there): dQ's f32 sum is a third output, zero-initialised by the interpreter, that the
    # kernel adds into (its CTAs run one after another there).
    params = dataclasses.replace(_interpret_arg(st)["interpret"], uninitialized_memory="zero")

    n_in = len(operands)

    def interpret_kernel(*refs):
      # plgpu.kernel passes (inputs, dK, dV, dQ sum, scratch...); `kernel` takes the dQ sum
      # right after the inputs, where the compiled launch's Ref operand sits
      return kernel(*refs[:n_in], refs[n_in + 2], *refs[n_in:n_in + 2], *refs[n_in + 3:])
    return plgpu.kernel(
        interpret_kernel, out_type=(kv_type, kv_type,
                                    jax.ShapeDtypeStruct((st.B, st.Tp, st.N, D), jnp.float32)),
        scratch_types=scratch, grid=grid, grid_names=names, num_threads=3, thread_name="wg",
        compiler_params=_compiler_params(st.cfg), interpret=params)(*operands)
  # The dQ sum is a Ref the kernel reduce-adds into. Launched Ref-free (`_without_refs`), so
  # that `_batch_folded` can take it under vmap: not `_kernel_with_ref`'s per-element lax.map,
  # because where the raw sum becomes a lax.map / scan's stacked output its reduce-adds are
  # lost - it came back zero on the H100 however the Ref was made, with XLA's command buffers
  # on or off - while a fori_loop carrying it and a scan over layers (the sum scaled before it
  # leaves the body, as `_core_bwd_impl` does) were correct (twelfth session,
  # benchmarks/results/logs_s12/probe_fused_{vmap,loop}.py; test_backward_inside_scan).
  def run(*arrays):
    dq_acc = jax.new_ref(jnp.zeros((st.B, st.Tp, st.N, D), jnp.float32))
    # the dynamic scheduler's counter precedes the dQ sum (see `kernel`)
    refs = (jax.new_ref(jnp.zeros((1,), jnp.int32)),) if counter else ()
    dk, dv = _launch_with_ref(kernel, arrays, refs + (dq_acc,), (kv_type, kv_type), scratch,
                              grid, names, _compiler_params(st.cfg))
    return dk, dv, jax.freeze(dq_acc)
  return _without_refs(run, *operands)


def _launch_with_ref(body, operands, ref, out_type, scratch, grid, names, params):
  """plgpu.kernel for a body that also gets a mutable `jax.Ref` operand (or a tuple of them),
  passed right after `operands` (aliased in and out). plgpu.kernel's custom_vmap wrapper does
  not accept Refs, so this goes one level down, to `pl.kernel` over a `plgpu.Mesh` (what
  plgpu.kernel itself calls); that has no vmap rule (see `_kernel_with_ref`)."""
  a = _api()
  pl, plgpu = a["pl"], a["plgpu"]

  def kernel_body(*refs):
    pl.run_scoped(functools.partial(body, *refs), *scratch, collective_axes="wg")
  mesh = plgpu.Mesh(grid=grid, grid_names=names, num_threads=3, thread_name="wg")
  refs = ref if isinstance(ref, tuple) else (ref,)
  return pl.kernel(kernel_body, out_type=out_type, mesh=mesh,
                   compiler_params=params)(*operands, *refs)


def _kernel_with_ref(body, operands, ref_init, out_type, scratch, grid, names, params):
  """`_launch_with_ref` with a scratch Ref made from `ref_init` (the dynamic scheduler's
  counter) -> the outputs, as a call that `vmap` runs once per batch element
  (`_without_refs`, `_sequential_under_vmap`). The Ref's final value is not returned: inside
  `lax.map` a kernel's writes to it do not reach it (twelfth session; the fused backward, whose
  result is its Ref, is folded into the batch instead: `_batch_folded`)."""
  def run(*arrays):
    ref = jax.new_ref(arrays[-1])
    return _launch_with_ref(body, arrays[:-1], ref, out_type, scratch, grid, names, params)
  return _sequential_under_vmap(functools.partial(_without_refs, run))(*operands, ref_init)


def _without_refs(fn, *args):
  """fn(*args) for an fn that makes, mutates and freezes its own Refs, evaluated from its
  jaxpr with the Refs discharged (turned into values threaded through), so that the call
  carries no Ref effect - which `custom_vmap` (below) cannot hold."""
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
  closed = _api()["discharge_state"](closed)
  out = _api()["eval_jaxpr"](closed.jaxpr, closed.consts, *args)
  return jax.tree.unflatten(jax.tree.structure(shapes), out)


def _sequential_under_vmap(fn):
  """fn (array arguments -> pytree of arrays) that, under `vmap`, maps over the batched
  arguments with `lax.map` (one call per batch element) instead of batching its body: the
  Mosaic GPU kernels launched by `pl.kernel` have no batching rule."""
  fn = jax.custom_batching.custom_vmap(fn)

  @fn.def_vmap
  def _rule(axis_size, in_batched, *args):
    del axis_size
    which = [i for i, batched in enumerate(in_batched) if batched]

    def one(xs):
      full = list(args)
      for i, x in zip(which, xs):
        full[i] = x
      return fn(*full)
    out = lax.map(one, [args[i] for i in which])
    return out, jax.tree.map(lambda _: True, out)
  return fn


def _batch_folded(call, st: _Static, *arrays):
  """call(st, *arrays) for arrays (and outputs) whose leading axis is the batch (st.B). Under
  vmap the mapped axis is folded into the batch - one launch over axis_size * B batch rows
  (the kernel's CTAs are per batch row), no loop around the kernel - so `call` must carry no
  Ref effect (`_without_refs`). Unmapped arguments are broadcast. Every array must lead with the
  batch (segment ids do; block lists, [Bm, ...], need not, so they are refused): the fused
  backward."""
  if st.sparse:
    raise ValueError("_batch_folded takes no block lists")
  f = jax.custom_batching.custom_vmap(functools.partial(call, st))

  @f.def_vmap
  def _rule(axis_size, in_batched, *xs):
    xs = [x if mapped else jnp.broadcast_to(x, (axis_size,) + x.shape)
          for x, mapped in zip(xs, in_batched)]
    out = _batch_folded(call, dataclasses.replace(st, B=axis_size * st.B),
                        *(x.reshape((-1,) + x.shape[2:]) for x in xs))
    out = jax.tree.map(lambda o: o.reshape((axis_size, st.B) + o.shape[1:]), out)
    return out, jax.tree.map(lambda _: True, out)
  return f(*arrays)


def _grid(st: _Static, heads: int, tiles: int, tile_name: str):
  """(grid, names): heads first (default) or tiles first (`cfg.tiles_fastest`), batch last.

  Mosaic GPU reverses the grid onto blockIdx (the last axis is x), so the hardware launches
  the CTAs batch fastest, then the middle axis, the first axis slowest: by default a head's
  tiles of every batch row together. Per-CTA clock stamps confirmed it (seventeenth session,
  NOTES.md Hopper v20). The persistent kernels' work items (`_fwd_work_item`,
  `_dkv_work_item`) are numbered the other way round (first axis fastest); items in the
  hardware's order measured no better (same notes)."""
  if st.cfg.tiles_fastest:
    return (tiles, heads, st.B), (tile_name, "heads", "batch")
  return (heads, tiles, st.B), ("heads", tile_name, "batch")


# --------------------------------------------------------------------------------------------
# custom_vjp core on padded arrays. Outputs (out [B,Tp,N,D], lse2 [B,N,Tp] base-2 units).
# --------------------------------------------------------------------------------------------
# `seg` is None or (q_seg [B, Tp], kv_seg [B, Sp]) int32; `sp` is None or (kv lists, q lists,
# q side arrays, kv side arrays) of block_sparsity, all int32: primal inputs (they may be
# traced) with no cotangent (`None` in the backward's output).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _core(st: _Static, bwd: str, q, k, v, seg, sp):
  return _fwd_call(st, q, k, v, seg, sp)


def _core_fwd(st, bwd, *args):
  # symbolic_zeros=True (below): the primals come wrapped with their perturbation flags
  q, k, v, seg, sp = jax.custom_derivatives.custom_vjp_primal_tree_values(args)
  out, lse2 = _fwd_call(st, q, k, v, seg, sp)
  return (out, lse2), (q, k, v, seg, sp, out, lse2)


def _core_bwd(st, bwd, res, cts):
  # A call whose lse does not reach the loss (the common case) has a symbolic zero lse
  # cotangent: the backward then runs without one (no dlse tiles for the dQ kernel to load,
  # which also leaves it the shared memory for the dynamic scheduler's item slots).
  do, dlse2 = cts
  zero = jax.custom_derivatives.SymbolicZero
  if isinstance(dlse2, zero):
    dlse2 = None
  if isinstance(do, zero):   # only lse reaches the loss
    do = jnp.zeros(do.shape, do.dtype)
  return _core_bwd_impl(st, bwd, res, (do, dlse2)) + (None, None)


def _core_bwd_impl(st, bwd, res, cts):
  q, k, v, seg, sp, out, lse2 = res
  do, dlse2 = cts
  do = do.astype(q.dtype)
  # Rows with no kept key: lse = -inf would give p = exp2(s + inf); +inf gives p = 0.
  lse_b = jnp.where(lse2 == _NEG_INF, jnp.inf, lse2)
  if bwd == "mosaic":
    # The dQ kernel computes delta from the O / dO tiles it loads, so it runs first.
    dq, delta = _dq_call(st, q, k, v, do, out, lse_b, dlse2, seg=seg, sp=sp)
    dk, dv = _dkv_call(st, q, k, v, do, lse_b, delta, seg=seg, sp=sp)
    return dq, dk, dv
  if st.sparse:   # also refused up front for an explicit backward=; here: head_dim > 128
    raise ValueError(f"block_sparsity needs backward='mosaic' (head_dim <= 128); the "
                     f"{bwd!r} backward does not take it")
  delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
  if dlse2 is not None:
    # d lse / d s = p: folds into delta (ds = p * (dp - delta + dlse)); lse2 = lse * log2(e).
    delta = delta - dlse2.astype(jnp.float32) * LOG2E
  if bwd == "fused":
    dk, dv, dq_acc = _batch_folded(_fused_bwd_call, st, q, k, v, do, lse_b, delta,
                                   *(seg or ()))
    return (dq_acc * st.scale).astype(q.dtype), dk, dv
  # "xla": a blocked jnp recomputation with the same masking (correct, not fast).
  return _bwd_xla(st, q, k, v, do, lse_b, delta, seg)


_core.defvjp(_core_fwd, _core_bwd, symbolic_zeros=True)


def _fused_bwd_call(st: _Static, q, k, v, do, lse2, delta, *seg):
  """The fused backward with the segment ids (if any) as flat trailing arrays (batch-folded)."""
  return _dkv_call(st, q, k, v, do, lse2, delta, fused=True, seg=tuple(seg) or None)


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


def _fwd_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, segments: bool = False,
                    q_sides: int = 0, kv_sides: int = 0, persistent: bool | None = None) -> int:
  """Forward kernel SMEM: Q (2 consumers) + K/V ring + lse + Mosaic scratch + ~1 KiB slack
  (+ per int32 side array - segment ids: one of each - its values for the Q tiles or for the
  K ring). The block lists take none: they are read from GMEM.

  `persistent`: count the persistent kernel's buffers (Q and its row side values double
  buffered; lse stays single: see `_fwd_call`). None: what the kernel will allocate, i.e.
  persistent only if `cfg.persistent` and that fits (`_fwd_persistent`)."""
  if segments:
    q_sides, kv_sides = 1, 1
  if persistent is None:
    persistent = _fwd_persistent(cfg, D, itemsize, q_sides, kv_sides)
  qbufs = 2 if persistent else 1
  buffers = (qbufs * 2 * cfg.block_q + 2 * cfg.stages * cfg.block_kv) * D * itemsize
  scratch = 2048 if cfg.reduction_scratch_bytes is None else cfg.reduction_scratch_bytes
  sides = (q_sides * qbufs * 2 * cfg.block_q + kv_sides * cfg.stages * cfg.block_kv) * 4
  items = 1024 if persistent and cfg.persistent_dynamic else 0   # handoff slots (1 KiB alloc)
  return buffers + 2 * cfg.block_q * 4 + scratch + 1024 + sides + items


def _fwd_persistent(cfg: HopperConfig, D: int, itemsize: int, q_sides: int = 0,
                    kv_sides: int = 0) -> bool:
  """Whether the forward runs persistent: `cfg.persistent`, unless the second Q buffer does
  not fit in shared memory. That is the case for the default D=256 config (block_kv 64 x 2
  stages: 265728 > 232448 bytes); rather than silently shrinking a tuned ring (1 stage would
  fit), such configs run the non-persistent kernel. An explicit HopperConfig(block_kv=64,
  stages=1, persistent=True) does run persistent at D=256."""
  return cfg.persistent and _fwd_smem_bytes(cfg, D, itemsize, q_sides=q_sides,
                                            kv_sides=kv_sides, persistent=True) <= _SMEM_LIMIT


def _persistent_ctas(cfg: HopperConfig, items: int) -> int:
  """CTAs of a persistent kernel (the forward with `cfg.persistent`, the dQ kernel with
  `cfg.bwd_persistent`, the dK/dV kernel with `cfg.dkv_persistent`): `cfg.persistent_ctas`,
  else the GPU's SM count (132, the H100 SXM's, where it cannot be read), never more than
  there are work items."""
  n = cfg.persistent_ctas
  if n is None:
    n = 132
    try:
      dev = jax.devices()[0]
      if dev.platform == "gpu" and getattr(dev, "core_count", None):
        n = int(dev.core_count)
    except RuntimeError:  # pragma: no cover - no backend
      pass
  return max(1, min(n, items))


def _smem_alloc(nbytes: int) -> int:
  """Mosaic GPU rounds every shared-memory allocation (scratch buffer) up to 1 KiB."""
  return -(-nbytes // 1024) * 1024


def _dq_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, segments: bool = False,
                   q_sides: int = 0, kv_sides: int = 0, persistent: bool | None = None,
                   dlse: bool = False) -> int:
  """dQ kernel SMEM (the backward's largest), as Mosaic GPU allocates it (every buffer rounded
  up to 1 KiB, 8 bytes per barrier; checked against the lowering's own count in
  tests/test_kernel_lowering.py):
  * non-persistent: Q, dO, O (2 consumers) + K/V ring + lse, delta, dlse (one allocation
    each) + the int32 side values of the Q tiles and of the K ring (one allocation per side
    array; segment ids: one of each) + the reduction scratch (2 KiB unless configured).
  * persistent (`persistent`; None: what the kernel will allocate, `_dq_persistent`): Q and
    dO double-buffered (4 tiles each), O single (2), the ring; lse / delta / dlse in one f32
    allocation (delta staged in the lse slot), all side values in one int32 allocation; no
    reduction scratch. D=128, bwd_stages=2: 230448 bytes, with segment ids 231472 (limit
    232448); D=64: 115760. With `cfg.persistent_dynamic` the f32 allocation has one more
    row (the item slots) and there are 4 more barriers: +32 bytes, unless the call also
    has an lse cotangent (`dlse`), which then needs a second KiB for that allocation."""
  if segments:
    q_sides, kv_sides = 1, 1
  if persistent is None:
    persistent = _dq_persistent(cfg, D, itemsize, q_sides, kv_sides, dlse)
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  tile = bq * D * itemsize
  ring = 2 * _smem_alloc(stages * bkv * D * itemsize)
  dynamic = persistent and cfg.persistent_dynamic
  barriers = 8 * (2 + 2 * stages + cfg.bwd_schedule_barrier + 4 * dynamic)
  if persistent:
    rows = 1 + dlse + dynamic   # lse / delta, dlse, item slots
    bufs = 2 * _smem_alloc(4 * tile) + _smem_alloc(2 * tile) + _smem_alloc(rows * 2 * bq * 4)
    sides = _smem_alloc((2 * q_sides + stages * kv_sides) * bkv * 4) if q_sides + kv_sides else 0
    scratch = 0
  else:
    bufs = 3 * _smem_alloc(2 * tile) + 3 * _smem_alloc(2 * bq * 4)
    sides = q_sides * _smem_alloc(2 * bq * 4) + kv_sides * _smem_alloc(stages * bkv * 4)
    scratch = _smem_alloc(2048 if cfg.reduction_scratch_bytes is None
                          else cfg.reduction_scratch_bytes)
  return ring + bufs + sides + barriers + scratch


def _dq_persistent(cfg: HopperConfig, D: int, itemsize: int, q_sides: int = 0,
                   kv_sides: int = 0, dlse: bool = False) -> bool:
  """Whether the dQ kernel runs persistent: `cfg.bwd_persistent`, unless its buffers do not
  fit in shared memory (then it runs non-persistent, as `_fwd_persistent`). They fit for
  D <= 128 with bwd_stages=2, plain or with segment ids; not at D=128 with block-sparse side
  arrays (one q + two kv side arrays: 232496 > 232448 bytes) or with bwd_stages=3 (D=128)."""
  return cfg.bwd_persistent and _dq_smem_bytes(cfg, D, itemsize, q_sides=q_sides,
                                               kv_sides=kv_sides, persistent=True,
                                               dlse=dlse) <= _SMEM_LIMIT


def _dkv_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, q_sides: int = 0,
                    kv_sides: int = 0, persistent: bool | None = None) -> int:
  """dK/dV kernel SMEM (not fused), as Mosaic GPU allocates it (1 KiB per buffer, 8 bytes per
  barrier): K, V (2 consumers; double-buffered when persistent) + the Q / dO ring + lse /
  delta per slot + the int32 side values (key sides per K / V buffer, query sides per slot);
  no reduction scratch (the kernel has no cross-thread reduction, so Mosaic reserves none);
  with the dynamic scheduler its item slots (1 KiB) and 4 barriers. `persistent` None: what
  the kernel will allocate (`_dkv_persistent`). D=128, bwd_stages=2, persistent: 198704
  bytes (K / V double-buffered: +64 KiB), 199760 with the dynamic scheduler."""
  if persistent is None:
    persistent = _dkv_persistent(cfg, D, itemsize, q_sides, kv_sides)
  bq, bkv, stages = cfg.bwd_block_q, cfg.bwd_block_kv, cfg.bwd_stages
  kv_bufs = 4 if persistent else 2
  dynamic = persistent and cfg.persistent_dynamic
  bufs = (2 * _smem_alloc(kv_bufs * bkv * D * itemsize)      # K, V
          + 2 * _smem_alloc(stages * bq * D * itemsize)      # Q, dO ring
          + 2 * _smem_alloc(stages * bq * 4))                # lse, delta
  sides = kv_sides * _smem_alloc(kv_bufs * bkv * 4) + q_sides * _smem_alloc(stages * bq * 4)
  barriers = 8 * (2 + 2 * stages + cfg.bwd_schedule_barrier + 4 * dynamic)
  return bufs + sides + barriers + 1024 * dynamic


def _fused_smem_bytes(cfg: HopperConfig, D: int, itemsize: int, segments: bool = False) -> int:
  """The fused backward's SMEM: the non-persistent dK/dV kernel's (segment ids: one query and
  one key side buffer) + the two consumers' dS^T tiles by step parity, the f32 dQ staging
  tiles and the 2 "end of step" barriers. D=128, bwd_stages=2: 198720 bytes (200768 with
  segment ids); bwd_stages=3 with segment ids does not fit (233552)."""
  bq, bkv = cfg.bwd_block_q, cfg.bwd_block_kv
  dq_cols = D // 2 if D >= 128 else D
  sides = int(segments)
  items = (1024 + 32) if cfg.fused_persistent and cfg.persistent_dynamic else 0
  return (_dkv_smem_bytes(cfg, D, itemsize, sides, sides, persistent=False)
          + _smem_alloc(2 * 2 * bkv * bq * itemsize) + _smem_alloc(2 * bq * dq_cols * 4) + 16
          + items)


def _fused_fits(cfg: HopperConfig, head_dim: int, segments: bool) -> bool:
  return _fused_smem_bytes(cfg, _padded_head_dim(head_dim), 2, segments) <= _SMEM_LIMIT


def _dkv_persistent(cfg: HopperConfig, D: int, itemsize: int, q_sides: int = 0,
                    kv_sides: int = 0) -> bool:
  """Whether the (non-fused) dK/dV kernel runs persistent: `cfg.dkv_persistent`, unless its
  buffers do not fit in shared memory (as `_dq_persistent`): they fit for D <= 128 with
  bwd_stages=2 (side arrays included); with bwd_stages=3 at D=128 only plain calls (no side
  values) with the static split."""
  return cfg.dkv_persistent and _dkv_smem_bytes(cfg, D, itemsize, q_sides, kv_sides,
                                                persistent=True) <= _SMEM_LIMIT


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
                     interpret: bool = False, block_sparsity=None, mask_fn=None,
                     q_side=(), kv_side=()):
  """Flash attention on Hopper (Mosaic GPU): q [B,T,N,D], k/v [B,S,K,D] -> out [B,T,N,D].

  `segment_ids`: None, a [B, T] integer array (T == S) or a pair (q_ids [B, T], kv_ids [B, S]);
  row i attends to column j only if q_ids[b, i] == kv_ids[b, j] (documents / packed sequences;
  ids may be traced). KV blocks whose id range cannot meet a tile's are skipped, blocks inside
  one document (and below the causal diagonal) run unmasked; see `_seg_block_ranges`.

  `block_sparsity`: a `pallas_kernels.BlockSparsity` built with blocks (128, 128) (one forward
  / dQ CTA's query rows, one dK/dV CTA's keys), lists [Bm, Hm, ...] with Bm in {1, B}, Hm in
  {1, N}: each CTA visits only its listed blocks, the partial ones masked by
  `mask_fn(b, h, q_pos, kv_pos, q_vals, kv_vals) -> bool` (positions: int32 tiles with the
  offsets added; q_vals / kv_vals: tuples of the `q_side` [B|1, T] / `kv_side` [B|1, S] int32
  arrays' values at those rows / columns, broadcast to the tile; the dK/dV kernel's tiles are
  transposed, [kv, q], so mask_fn must be elementwise), the full ones unmasked. As in
  `flash_attention`; excludes is_causal, sliding_window and segment_ids (fold them into
  mask_fn); needs HopperConfig.block_kv in (64, 128) and backward="mosaic".

  `backward`: "mosaic" (the dQ and dK/dV kernels; head dims <= 128), "fused" (one dK/dV kernel
  that also accumulates dQ with TMA reduce-adds; head dims <= 128; refused where its shared
  memory would not fit, e.g. bwd_stages=3 at head_dim 128 with segment ids; in interpret mode
  with a causal mask, window or segment ids it needs `INTERPRET_XLA_FLAG` in XLA_FLAGS) or "xla" (a dense jnp
  recomputation from the kernel's residuals: correct, not fast). Default: `default_backward`
  ("fused" wherever it applies - segment ids included -, "mosaic" for block_sparsity, for
  configs with the two-kernel backward's own switches and for causal calls of up to 1024 keys
  and queries, whose default config has the persistent dK/dV kernel; "xla" above head_dim
  128). Naming "fused" or "xla" with no `config` drops those switches from the default config.
  `interpret=True` runs the kernels in Mosaic GPU interpret mode (CPU).
  Returns `out`, or `(out, lse [B,N,T] float32)` with `return_lse`.
  """
  st, backward, (qp, kp, vp, seg, sp), pad = _prepare(
      q, k, v, scale=scale, is_causal=is_causal, q_offset=q_offset, kv_offset=kv_offset,
      sliding_window=sliding_window, segment_ids=segment_ids, config=config,
      backward=backward, interpret=interpret, block_sparsity=block_sparsity, mask_fn=mask_fn,
      q_side=q_side, kv_side=kv_side)
  out, lse2 = _core(st, backward, qp, kp, vp, seg, sp)
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
  st, backward, (qp, kp, vp, seg, sp), pad = _prepare(q, k, v, **kwargs)
  T, S, D0 = st.T, st.S, q.shape[-1]
  # Padded rows: lse -inf (p = 0 there), out / dout zero.
  lse2 = jnp.pad(lse.astype(jnp.float32) * LOG2E, ((0, 0), (0, 0), (0, st.Tp - T)),
                 constant_values=_NEG_INF)
  dlse2 = None if dlse is None else jnp.pad(dlse.astype(jnp.float32) * LN2,
                                            ((0, 0), (0, 0), (0, st.Tp - T)))
  res = (qp, kp, vp, seg, sp, pad(out.astype(jnp.float32), T, st.Tp), lse2)
  dq, dk, dv = _core_bwd_impl(st, backward, res, (pad(dout.astype(q.dtype), T, st.Tp), dlse2))
  return dq[:, :T, :, :D0], dk[:, :S, :, :D0], dv[:, :S, :, :D0]


def _prepare(q, k, v, *, scale=None, is_causal=False, q_offset=0, kv_offset=0,
             sliding_window=None, segment_ids=None, config=None, backward=None,
             interpret=False, block_sparsity=None, mask_fn=None, q_side=(), kv_side=()):
  """Checks a call and builds its `_Static`, the backward mode and the padded (q, k, v,
  segment ids, block-sparse operands); also returns the padding function `pad(x, L, Lp)` for
  [B, L, N, D] arrays."""
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
  static = sliding_window is None and seg_ids is None and block_sparsity is None
  uniform = static and not is_causal
  short_walks = None
  if seg_ids is not None or block_sparsity is not None:
    short_walks = "data"
  elif sliding_window is not None:
    r_eff = _right_reach(is_causal, right)
    if left is not None and r_eff is not None and left + r_eff + 1 <= _DYNAMIC_MAX_BAND:
      short_walks = "band"
  cfg = config or default_config(D0, S, uniform_tiles=uniform, static_ranges=static,
                                 short_walks=short_walks, q_len=T)
  q_side, kv_side = tuple(q_side), tuple(kv_side)
  if block_sparsity is None and (mask_fn is not None or q_side or kv_side):
    raise ValueError("mask_fn / q_side / kv_side need a block_sparsity (without one every "
                     "block is full and the mask is never applied)")
  if block_sparsity is not None:
    _check_sparse_call(cfg, is_causal, sliding_window, seg_ids, backward)
  smem = _fwd_smem_bytes(cfg, D, jnp.dtype(q.dtype).itemsize, seg_ids is not None,
                         len(q_side), len(kv_side))
  if smem > _SMEM_LIMIT:
    raise ValueError(f"{cfg} needs ~{smem} bytes of shared memory for head_dim {D} (limit "
                     f"{_SMEM_LIMIT}); use fewer stages, a smaller block_kv or a smaller "
                     "reduction_scratch_bytes")
  if scale is None:
    scale = 1.0 / math.sqrt(D0)
  if backward is None:
    backward = default_backward(D0, block_mask=block_sparsity is not None,
                                masked=(is_causal or sliding_window is not None
                                        or seg_ids is not None),
                                interpret=bool(interpret), config=cfg,
                                segments=seg_ids is not None)
  if backward in ("mosaic", "fused") and not bwd_kernel_supports(D0):
    raise NotImplementedError(f"the Mosaic backward supports head_dim <= 128, got {D0}")
  if backward not in ("mosaic", "fused", "xla"):
    raise ValueError(f"backward must be 'mosaic', 'fused' or 'xla', got {backward!r}")
  # Switches of another backward's kernels than the one this call runs (named, or picked /
  # fallen back to: a block mask, head_dim > 128): the default config's came with its default
  # backward and are dropped (the rest of the config is kept); a caller's own are refused
  # rather than ignored.
  foreign = _foreign_bwd_switches(cfg, backward)
  if foreign and config is not None:
    owners = " / ".join(f"{fields} of the {owner!r} backward" for owner, fields in foreign.items())
    owner = next(iter(foreign))
    runs_owner = bwd_kernel_supports(D0) and not (owner == "fused" and block_sparsity is not None)
    raise ValueError(f"the {backward!r} backward (named, or what this call falls back to) "
                     f"cannot honour HopperConfig {owners}; "
                     + (f"use backward={owner!r} or drop them" if runs_owner else "drop them"))
  if foreign:
    cfg = dataclasses.replace(cfg, **{f: False for fs in foreign.values() for f in fs})
  if backward == "fused" and not _fused_fits(cfg, D0, seg_ids is not None):
    need = _fused_smem_bytes(cfg, D, 2, seg_ids is not None)
    dims = f"head_dim {D0}" + (f" (padded to {D})" if D != D0 else "")
    raise ValueError(f"backward='fused' with {cfg} needs ~{need} bytes of shared memory at "
                     f"{dims}{' with segment_ids' if seg_ids is not None else ''} (limit "
                     f"{_SMEM_LIMIT}); use bwd_stages=2 or backward='mosaic'")
  tq = 2 * max(cfg.block_q, cfg.bwd_block_q)
  tkv = math.lcm(cfg.block_kv, 2 * cfg.bwd_block_kv, cfg.bwd_block_kv)
  Tp = -(-T // tq) * tq
  Sp = -(-S // tkv) * tkv
  sp, sparse_kw = None, {}
  if block_sparsity is not None:
    sp, sparse_kw = _prepare_sparse(block_sparsity, mask_fn, q_side, kv_side, B, T, S, N, K,
                                    Tp, Sp)
  st = _Static(B=B, T=T, S=S, Tp=Tp, Sp=Sp, N=N, K=K, D=D, dtype=jnp.dtype(q.dtype),
               scale=float(scale), causal=bool(is_causal), q_off=q_off, kv_off=kv_off,
               left=left, right=right, cfg=cfg, interpret=bool(interpret),
               segments=seg_ids is not None, **sparse_kw)

  def pad(x, L, Lp):
    if L == Lp and D == D0:
      return x
    return jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, D - D0)))

  def pad_ids(x, L, Lp):
    # Edge padding: the padded rows / columns repeat the last real id, so they change no
    # tile's [min, max] id range (padded keys are masked by index, padded rows discarded).
    return x if L == Lp else jnp.pad(x, ((0, 0), (0, Lp - L)), mode="edge")
  seg = None if seg_ids is None else (pad_ids(seg_ids[0], T, Tp), pad_ids(seg_ids[1], S, Sp))
  return st, backward, (pad(q, T, Tp), pad(k, S, Sp), pad(v, S, Sp), seg, sp), pad


def _check_sparse_call(cfg: HopperConfig, is_causal, sliding_window, seg_ids, backward):
  """The static refusals of a block_sparsity call (see `hopper_attention`)."""
  if is_causal or sliding_window is not None or seg_ids is not None:
    raise ValueError("block_sparsity excludes is_causal, sliding_window and segment_ids: fold "
                     "them into mask_fn (and the block lists)")
  # block_q, bwd_block_q, bwd_block_kv are always 64: a CTA's 2 x 64 rows are one block.
  blk = _SPARSE_BLOCK
  if blk % cfg.block_kv:
    raise ValueError(f"block_sparsity needs HopperConfig.block_kv to divide the sparsity block "
                     f"{blk} (64 or 128), got {cfg.block_kv}")
  if backward in ("fused", "xla"):
    raise ValueError(f"backward={backward!r} does not take block_sparsity; use 'mosaic'")


def _prepare_sparse(block_sparsity, mask_fn, q_side, kv_side, B, T, S, N, K, Tp, Sp):
  """Checks the block lists and side arrays: ((kv lists, q lists, q sides, kv sides) padded
  int32, the `_Static` fields)."""
  blk = _SPARSE_BLOCK
  nq, nkv = -(-T // blk), -(-S // blk)
  assert (nq * blk, nkv * blk) == (Tp, Sp), (Tp, Sp)   # one CTA row / column per block
  arrays = [jnp.asarray(getattr(block_sparsity, f)) for f in _SPARSE_FIELDS]
  if arrays[0].ndim != 3:
    raise ValueError(f"block_sparsity.kv_num_blocks must be [Bm, Hm, nq], got "
                     f"{tuple(arrays[0].shape)}")
  Bm, Hm = int(arrays[0].shape[0]), int(arrays[0].shape[1])
  expect = {"kv_num_blocks": (Bm, Hm, nq), "kv_indices": (Bm, Hm, nq, nkv),
            "full_kv_num_blocks": (Bm, Hm, nq), "full_kv_indices": (Bm, Hm, nq, nkv),
            "q_num_blocks": (Bm, Hm, nkv), "q_indices": (Bm, Hm, nkv, nq),
            "full_q_num_blocks": (Bm, Hm, nkv), "full_q_indices": (Bm, Hm, nkv, nq)}
  for f, a in zip(_SPARSE_FIELDS, arrays):
    if tuple(a.shape) != expect[f]:
      raise ValueError(f"block_sparsity.{f} has shape {tuple(a.shape)}, expected {expect[f]} "
                       f"for T={T}, S={S}, block=({blk}, {blk}) (the Hopper kernel's block "
                       "size)")
    if not jnp.issubdtype(a.dtype, jnp.integer):
      raise TypeError(f"block_sparsity.{f} must be an integer array")
  if Bm not in (1, B) or Hm not in (1, N):
    raise ValueError(f"block_sparsity batch/head dims ({Bm}, {Hm}) must be 1 or ({B}, {N})")
  arrays = [a.astype(jnp.int32) for a in arrays]
  sides = []
  for name, arrs, L, Lp in (("q", q_side, T, Tp), ("kv", kv_side, S, Sp)):
    out = []
    for arr in arrs:
      arr = jnp.asarray(arr)
      if arr.ndim != 2 or arr.shape[0] not in (1, B) or arr.shape[1] != L:
        raise ValueError(f"{name} side array must be [B|1, {'T' if name == 'q' else 'S'}] = "
                         f"[{B}|1, {L}], got {tuple(arr.shape)}")
      out.append(jnp.pad(arr.astype(jnp.int32), ((0, 0), (0, Lp - L))))
    sides.append(tuple(out))
  sp = (tuple(arrays[:4]), tuple(arrays[4:]), sides[0], sides[1])
  kw = dict(sparse=True, mask_fn=mask_fn,
            q_side_b=tuple(a.shape[0] > 1 for a in sides[0]),
            kv_side_b=tuple(a.shape[0] > 1 for a in sides[1]), Bm=Bm, Hm=Hm)
  return sp, kw


_SPARSE_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                  "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")
