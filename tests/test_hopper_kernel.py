"""CPU tests of the Hopper (Mosaic GPU) attention kernel: `pallas_kernels.hopper_attention`.

What runs here (jax 0.10.2, Mosaic GPU interpret mode, `InterpretGPUParams`):
  * the whole kernels - 3 warpgroups per CTA (2 consumers + 1 TMA producer, i.e. the warp
    specialization), TMA copies into a ring of SMEM slots, loaded/free/schedule barriers,
    causal/window/padding block ranges and masks, online softmax, lse, both backward kernels -
    EXCEPT the wgmma instruction itself: the interpreter's wgmma accepts neither a transposed
    SMEM operand (Q @ K^T) nor a register operand (P @ V), so in interpret mode the products
    are jnp dots of the same SMEM contents (`_dots_nt` / `_mma_acc` in the kernel file). The
    compiled wgmma path, register-count settings and layouts are tested on the GPU
    (tests/test_gpu_hopper.py).
  * the block-range arithmetic, exhaustively against brute force (fast, pure jnp).

Interpret-mode runs go through a subprocess with a timeout: when one simulated warpgroup
raises, the others block on their barriers forever, which would hang pytest. One long-lived
subprocess per pytest worker (tests/case_runner.py) runs them one after another, and is
replaced after a timeout.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import hopper_attention as ha

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interpret_available():
  try:
    return ha._api()["InterpretParams"] is not None  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    return False


requires_interpret = pytest.mark.skipif(
    not _interpret_available(),
    reason="this jax has no Mosaic GPU interpret mode (InterpretGPUParams)")


# --------------------------------------------------------------------------------------------
# Block ranges vs brute force.
# --------------------------------------------------------------------------------------------
def _st(T, S, causal, q_off, kv_off, left, right, cfg=None):
  cfg = cfg or ha.HopperConfig()
  Tp = -(-T // 128) * 128
  Sp = -(-S // 128) * 128
  return ha._Static(B=1, T=T, S=S, Tp=Tp, Sp=Sp, N=1, K=1, D=64, dtype=np.dtype("float16"),
                    scale=1.0, causal=causal, q_off=q_off, kv_off=kv_off, left=left,
                    right=right, cfg=cfg, interpret=True)


def _keep_np(st, T, S):
  qp = st.q_off + np.arange(T)[:, None]
  kp = st.kv_off + np.arange(S)[None, :]
  keep = np.ones((T, S), bool)
  if st.causal:
    keep &= kp <= qp
  if st.left is not None:
    keep &= kp >= qp - st.left
  if st.right is not None:
    keep &= kp <= qp + st.right
  return keep


RANGE_CASES = list(itertools.product(
    [(128, 128), (200, 333), (64, 640)],          # T, S
    [False, True],                                # causal
    [(0, 0), (300, 0), (0, 150), (37, 5)],        # q_offset, kv_offset
    [(None, None), (100, None), (None, 40), (130, 0), (0, 0)],   # window
))


@pytest.mark.parametrize("ts,causal,offs,window", RANGE_CASES)
def test_kv_ranges_cover_exactly_the_needed_blocks(ts, causal, offs, window):
  T, S = ts
  st = _st(T, S, causal, *offs, *window)
  keep = _keep_np(st, T, S)
  rows = 128
  for bkv in (64, 128):
    nkv = st.Sp // bkv
    for r0 in range(0, st.Tp, rows):
      lo, flo, fhi, hi = (int(x) for x in ha._kv_ranges(st, r0, rows, bkv))
      assert 0 <= lo <= flo <= fhi <= hi <= nkv
      sub = keep[r0:min(r0 + rows, T)]
      for j in range(nkv):
        blk = sub[:, j * bkv:min((j + 1) * bkv, S)]
        if blk.any():
          assert lo <= j < hi, (r0, j, lo, hi)
        if flo <= j < fhi:  # no mask applied: every pair must be kept, no kv padding
          assert (j + 1) * bkv <= S and blk.all(), (r0, j, flo, fhi)


@pytest.mark.parametrize("ts,causal,offs,window", RANGE_CASES)
def test_q_ranges_cover_exactly_the_needed_blocks(ts, causal, offs, window):
  T, S = ts
  st = _st(T, S, causal, *offs, *window)
  keep = _keep_np(st, T, S)
  rows, bq = 128, 64
  nq = st.Tp // bq
  for c0 in range(0, st.Sp, rows):
    if c0 >= S:
      continue
    lo, flo, fhi, hi = (int(x) for x in ha._q_ranges(st, c0, rows, bq))
    assert 0 <= lo <= flo <= fhi <= hi <= nq
    sub = keep[:, c0:min(c0 + rows, S)]
    for i in range(nq):
      blk = sub[i * bq:min((i + 1) * bq, T)]
      if blk.any():
        assert lo <= i < hi, (c0, i, lo, hi)
      if flo <= i < fhi:
        assert blk.all(), (c0, i, flo, fhi)


def _consumer_steps(tile, own):
  """[(query block, "skip" / True (masked) / False (no mask))] of a consumer's walk."""
  n, sections = ha._consumer_walk(*tile, own[0], own[3])
  steps = [(int(blk(u)), masked) for u0, u1, masked, blk in sections
           for u in range(int(u0), int(u1))]
  assert len(steps) == int(n)   # the sections tile [0, n) in order
  return steps


def _check_consumer_steps(steps, tile, keep_w, bq, T):
  """A consumer's steps (from `_consumer_steps`) against keep_w [T, its real keys]: the tile's
  blocks in order, no skipped block with a kept pair, no unmasked block with a dropped pair
  -> the number of skipped steps."""
  lo, _, _, hi = (int(x) for x in tile)
  assert [i for i, _ in steps] == list(range(lo, hi))
  skipped = 0
  for i, kind in steps:
    blk = keep_w[i * bq:min((i + 1) * bq, T)]
    if kind == "skip":
      skipped += 1
      assert not blk.any(), (i, steps)
    elif kind is False:   # (padded keys need no mask in the dK/dV kernels)
      assert blk.all(), (i, steps)
  return skipped


@pytest.mark.parametrize("ts,causal,offs,window", RANGE_CASES[::3])
def test_consumer_walks_skip_only_blocks_their_keys_never_meet(ts, causal, offs, window):
  """The dK/dV kernels' per-consumer walks (HopperConfig.bwd_skip_empty_halves): each consumer
  steps through its tile's whole range (the producer's ring), skipping only blocks where none
  of its 64 keys pairs with a query, and runs unmasked only where all its pairs are kept."""
  T, S = ts
  st = _st(T, S, causal, *offs, *window)
  keep = _keep_np(st, T, S)
  bq = bkv = 64
  for c0 in range(0, min(st.Sp, S), 2 * bkv):
    tile = ha._q_ranges(st, c0, 2 * bkv, bq)
    for w in range(2):
      k0 = c0 + w * bkv
      own = ha._q_ranges(st, k0, bkv, bq)
      _check_consumer_steps(_consumer_steps(tile, own), tile, keep[:, k0:min(k0 + bkv, S)],
                            bq, T)


def test_consumer_walk_skips_where_a_half_meets_no_query():
  """The layout of test_interpret_mode's *_window_skips cases (T = S = 256, causal, 64-key
  window): on both tiles consumer 1 skips its first step (the diagonal block lies left of its
  keys); on the first, consumer 0 skips its last (the band has passed its keys)."""
  st = _st(256, 256, True, 0, 0, 63, 0)
  for c0 in (0, 128):
    tile = ha._q_ranges(st, c0, 128, 64)
    walks = [_consumer_steps(tile, ha._q_ranges(st, c0 + 64 * w, 64, 64)) for w in range(2)]
    kinds = [[k for _, k in steps] for steps in walks]
    assert kinds[1][0] == "skip" and kinds[1][1:].count("skip") == 0, walks
    assert kinds[0][:-1].count("skip") == 0, walks
    assert (kinds[0][-1] == "skip") == (c0 == 0), walks


@pytest.mark.parametrize("ts,causal,offs,window", RANGE_CASES)
def test_half_block_marks_only_halves_no_query_meets(ts, causal, offs, window):
  """The forward's half last step (HopperConfig.fwd_half_steps): `_half_block` of a consumer's
  64 rows and a 128-key block calls the block half only where the half it leaves out keeps no
  pair with any real row (nor a real key), and then computes the other half; on causal calls
  it does find the diagonal's upper half for some consumer (it is not a no-op)."""
  T, S = ts
  st = _st(T, S, causal, *offs, *window)
  keep = _keep_np(st, T, S)
  bq, bkv = 64, 128
  found = 0
  for q_base in range(0, min(st.Tp, T), bq):
    rows = keep[q_base:min(q_base + bq, T)]
    for j in range(st.Sp // bkv):
      half, off = (bool(x) if i == 0 else int(x)
                   for i, x in enumerate(ha._half_block(st, q_base, bq, j, bkv // 2)))
      if not half:
        continue
      found += 1
      assert off in (0, 64)
      dropped = rows[:, j * bkv + (64 - off):min(j * bkv + (64 - off) + 64, S)]
      assert not dropped.any(), (q_base, j, off)
  if causal and offs == (0, 0) and window[1] in (None, 0):
    assert found, "no half block on a causal call"


def test_default_config_takes_half_steps_with_the_overlap():
  """The half last step is in every overlapped default (forward +2-8% on the H100: causal 1k,
  4k, 16k, window 1024), and only there (it needs the overlapped walk)."""
  for cfg in (ha.default_config(128, 4096, static_ranges=True),
              ha.default_config(64, 2048, uniform_tiles=True),
              ha.default_config(128, 1024, static_ranges=True),      # causal 1k
              ha.default_config(128, 8192, short_walks="band"),       # window
              ha.default_config(128, 1024, uniform_tiles=True)):
    assert cfg.overlap_softmax and cfg.fwd_half_steps, cfg
  for cfg in (ha.default_config(128), ha.default_config(128, 8192),
              ha.default_config(128, 8192, short_walks="data")):
    assert not cfg.overlap_softmax and not cfg.fwd_half_steps, cfg


def _seg_layout(kind, B, T, S, seed):
  """(q_ids [B, T], kv_ids [B, S]) numpy int32."""
  rng = np.random.default_rng(seed)
  if kind == "unsorted":
    return rng.integers(0, 3, (B, T)).astype(np.int32), rng.integers(0, 3, (B, S)).astype(np.int32)
  L = max(T, S)
  ids = np.zeros((B, L), np.int32)
  for b in range(B):
    for x in rng.choice(np.arange(1, L), 3, replace=False):
      ids[b, x:] += 1
  q_ids, kv_ids = ids[:, :T].copy(), ids[:, :S].copy()
  if kind == "docs_orphan":   # query rows in a document no key has
    q_ids[:, T // 3:T // 3 + 20] = 99
  return q_ids, kv_ids


SEG_RANGE_CASES = list(itertools.product(
    [(128, 128), (200, 333), (300, 140)],                 # T, S
    [(False, (0, 0), (None, None)), (True, (0, 0), (None, None)),
     (True, (37, 5), (100, None)), (False, (0, 0), (60, 20))],   # causal, offsets, window
    ["docs", "docs_orphan", "unsorted"],
))


@pytest.mark.parametrize("ts,static,layout", SEG_RANGE_CASES)
def test_segment_range_tables_cover_exactly_the_needed_blocks(ts, static, layout):
  """The per-(batch, tile) tables of the segment-id path (static ranges intersected with the
  ids' min/max ranges): every block holding a kept pair is visited, every block run without a
  mask has all its pairs kept (and no padding), for the forward / dQ and the dK/dV tables."""
  import jax.numpy as jnp
  T, S = ts
  causal, offs, window = static
  B = 2
  st = ha._Static(B=B, T=T, S=S, Tp=-(-T // 128) * 128, Sp=-(-S // 128) * 128, N=1, K=1, D=64,
                  dtype=np.dtype("float16"), scale=1.0, causal=causal, q_off=offs[0],
                  kv_off=offs[1], left=window[0], right=window[1], cfg=ha.HopperConfig(),
                  interpret=True, segments=True)
  q_ids, kv_ids = _seg_layout(layout, B, T, S, seed=T + S)
  seg = (jnp.pad(jnp.asarray(q_ids), ((0, 0), (0, st.Tp - T)), mode="edge"),
         jnp.pad(jnp.asarray(kv_ids), ((0, 0), (0, st.Sp - S)), mode="edge"))
  keep = _keep_np(st, T, S)[None] & (q_ids[:, :, None] == kv_ids[:, None, :])   # [B, T, S]
  rows = 128
  n_full = n_skipped = 0
  for bkv in (64, 128):   # forward (block_kv 64 / 128) and dQ (64) tables
    tab = np.asarray(ha._q_tile_kv_table(st, seg, rows, bkv))
    nkv = st.Sp // bkv
    assert tab.shape == (B, st.Tp // rows, 4)
    for b in range(B):
      for ti in range(st.Tp // rows):
        lo, flo, fhi, hi = tab[b, ti]
        assert 0 <= lo <= flo <= fhi <= hi <= nkv
        sub = keep[b, ti * rows:min((ti + 1) * rows, T)]
        for j in range(nkv):
          blk = sub[:, j * bkv:min((j + 1) * bkv, S)]
          if blk.any():
            assert lo <= j < hi, (b, ti, j, tab[b, ti])
          elif not lo <= j < hi:
            n_skipped += 1
          if flo <= j < fhi:
            n_full += 1
            assert (j + 1) * bkv <= S and blk.all(), (b, ti, j, tab[b, ti])
  bq = 64
  tab = np.asarray(ha._kv_tile_q_table(st, seg, rows, bq))
  nq = st.Tp // bq
  assert tab.shape == (B, st.Sp // rows, 4)
  for b in range(B):
    for ci in range(st.Sp // rows):
      if ci * rows >= S:
        continue
      lo, flo, fhi, hi = tab[b, ci]
      assert 0 <= lo <= flo <= fhi <= hi <= nq
      sub = keep[b, :, ci * rows:min((ci + 1) * rows, S)]
      for i in range(nq):
        blk = sub[i * bq:min((i + 1) * bq, T)]
        if blk.any():
          assert lo <= i < hi, (b, ci, i, tab[b, ci])
        if flo <= i < fhi:
          assert blk.all(), (b, ci, i, tab[b, ci])
  if layout != "unsorted" and not causal and window == (None, None) and T >= 200:
    # documents alone: some blocks are skipped and some run unmasked (the point of the tables)
    assert n_skipped > 0 and n_full > 0, (n_skipped, n_full)
  # the dK/dV kernels read the table per half tile (a consumer's 64 keys) and derive the
  # tile's ranges from its two halves (`_halves_to_tile`): the same checks per tile, and each
  # consumer's walk (`_consumer_walk`) skips only blocks its keys never meet
  halves = np.asarray(ha._kv_tile_q_table(st, seg, rows // 2, bq))
  assert halves.shape == (B, st.Sp // (rows // 2), 4)
  n_consumer_skips = 0
  for b in range(B):
    for ci in range(st.Sp // rows):
      if ci * rows >= S:
        continue
      hs = [tuple(jnp.int32(x) for x in halves[b, 2 * ci + w]) for w in range(2)]
      tile = ha._halves_to_tile(*hs)
      lo, flo, fhi, hi = (int(x) for x in tile)
      assert 0 <= lo <= flo <= fhi <= hi <= nq
      for w in range(2):
        k0 = ci * rows + w * (rows // 2)
        if k0 >= S:
          continue
        n_consumer_skips += _check_consumer_steps(
            _consumer_steps(tile, hs[w]), tile, keep[b, :, k0:min(k0 + rows // 2, S)], bq, T)
  if layout == "docs" and static == (True, (0, 0), (None, None)) and T == S:
    assert n_consumer_skips > 0   # the diagonal blocks at least


def test_config_validation():
  with pytest.raises(ValueError):
    ha.HopperConfig(block_q=128)
  with pytest.raises(ValueError):
    ha.HopperConfig(block_kv=96)
  with pytest.raises(ValueError, match="consumer_registers / producer_registers.*<= 504"):
    ha.HopperConfig(consumer_registers=240, producer_registers=40)
  with pytest.raises(ValueError, match="consumer_registers / producer_registers.*multiple of 8"):
    ha.HopperConfig(consumer_registers=236)
  # the fused backward's own split: a hashable (consumer, producer) pair that setmaxnreg takes
  assert ha.HopperConfig().fused_registers == (240, 24)
  assert ha.HopperConfig(fused_registers=(232, 40)).fused_registers == (232, 40)
  for bad, msg in (([240, 24], "tuple of ints"), ((240,), "tuple of ints"),
                   ((True, 24), "tuple of ints"), ((244, 24), "multiple of 8"),
                   ((240, 16), ">= 24"), ((248, 24), "<= 504"),
                   # 512 registers per thread triple: hung on the H100 (the CTA has 504)
                   ((240, 32), "<= 504")):
    with pytest.raises(ValueError, match=f"fused_registers.*{msg}"):
      ha.HopperConfig(fused_registers=bad)
  assert ha.default_config(256).block_kv == 64
  # measured on the H100: (128, 3 stages) at D=128 overflows shared memory by 120 bytes
  big = ha.HopperConfig(block_kv=128, stages=3)
  assert ha._fwd_smem_bytes(big, 128, 2) > ha._SMEM_LIMIT
  assert ha._fwd_smem_bytes(ha.HopperConfig(block_kv=128, stages=3, reduction_scratch_bytes=512),
                            128, 2) <= ha._SMEM_LIMIT
  for d in (64, 128, 256):
    assert ha._fwd_smem_bytes(ha.default_config(d), d, 2) <= ha._SMEM_LIMIT
  assert ha.supported(128, np.float32) is not None
  assert ha.supported(128, "bfloat16") is None
  assert ha.bwd_kernel_supports(128) and not ha.bwd_kernel_supports(256)


def test_mask_functions_are_evaluated_without_not():
  """`_without_not` (Mosaic GPU in jax 0.11.2 cannot lower `not` of booleans): the same values
  as the mask function, `not` of booleans and of signed ints rewritten, nested jit included,
  no `not` left in what the kernel traces."""
  def mask(b, h, q, kv, qv, kvv):
    inner = jax.jit(lambda x: ~x & (q >= 0))
    return inner(~(q % 3 == kv % 5)) | ~(kv < 2) | ((~q) + kv > -3) | (qv[0] > h)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.integers(-50, 50, (8, 16)), jnp.int32)
  kv = jnp.asarray(rng.integers(-50, 50, (8, 16)), jnp.int32)
  qv = (jnp.asarray(rng.integers(0, 4, (8, 16)), jnp.int32),)
  rewritten = ha._without_not(mask)
  np.testing.assert_array_equal(rewritten(0, 1, q, kv, qv, ()), mask(0, 1, q, kv, qv, ()))
  assert "not" in str(jax.make_jaxpr(lambda *a: mask(0, 1, *a, ()))(q, kv, qv))
  assert "not" not in str(jax.make_jaxpr(lambda *a: rewritten(0, 1, *a, ()))(q, kv, qv))


def _resolved(S, T=None, D=128, **kw):
  """(backward, config) that `_prepare` resolves for a call of T (default S) queries on S keys
  (2 query heads on 1 KV head, head_dim D), traced from shapes only."""
  out = []

  def f(q, k, v):
    st, bwd = ha._prepare(q, k, v, **kw)[:2]
    out.append((bwd, st.cfg))
    return q
  q = jax.ShapeDtypeStruct((1, T or S, 2, D), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, S, 1, D), jnp.bfloat16)
  jax.eval_shape(f, q, kv, kv)
  return out.pop()


def test_default_config_persistent_and_overlap_rules(monkeypatch):
  # The rules measured on the H100 (NOTES, Hopper v5, v13 and v20): the persistent forward
  # for short kv lengths when every tile walks the same blocks (static split; with the
  # dynamic scheduler where the query length is short too, which also takes the persistent
  # fused backward); the dynamic scheduler where tiles walk few, unequal blocks (segment ids /
  # block masks, short-band windows, causal up to 1k); the non-persistent grid for long dense
  # / causal calls.
  dyn = lambda c: c.persistent and c.persistent_dynamic
  assert dyn(ha.default_config(128, 1024, uniform_tiles=True))
  assert dyn(ha.default_config(64, 512, uniform_tiles=True))
  long_q = ha.default_config(128, 1024, uniform_tiles=True, q_len=4096)
  assert long_q.persistent and not long_q.persistent_dynamic and not long_q.fused_persistent
  assert not ha.default_config(128, 1024).persistent
  assert not ha.default_config(128, 2048, uniform_tiles=True).persistent
  assert not ha.default_config(256, 512, uniform_tiles=True).persistent
  assert not ha.default_config(128).persistent
  assert dyn(ha.default_config(128, 1024, static_ranges=True))                  # causal 1k
  assert not ha.default_config(128, 2048, static_ranges=True).persistent        # causal 2k
  assert dyn(ha.default_config(128, 65536, short_walks="data"))
  assert dyn(ha.default_config(128, 65536, short_walks="band"))
  with pytest.raises(ValueError, match="short_walks"):
    ha.default_config(128, 1024, short_walks="window")
  # overlapped softmax (sixth session): persistent calls but the data-dependent walks, and
  # dense / causal from S=2k
  assert ha.default_config(128, 1024, uniform_tiles=True).overlap_softmax
  assert ha.default_config(128, 4096, static_ranges=True).overlap_softmax
  assert ha.default_config(64, 2048, uniform_tiles=True).overlap_softmax
  assert ha.default_config(128, 1024, static_ranges=True).overlap_softmax       # causal 1k
  assert ha.default_config(128, 8192, short_walks="band").overlap_softmax
  assert not ha.default_config(128, 8192, short_walks="data").overlap_softmax
  assert not ha.default_config(128, 8192).overlap_softmax        # long-band windows
  assert not ha.default_config(128).overlap_softmax               # the A/B base
  assert not ha.default_config(256, 8192, uniform_tiles=True).overlap_softmax
  # the overlapped calls run without the consumers' ping-pong (ninth session), the rest with it
  assert not ha.default_config(128, 1024, uniform_tiles=True).schedule_barrier
  assert not ha.default_config(128, 4096, static_ranges=True).schedule_barrier
  assert not ha.default_config(128, 1024, static_ranges=True).schedule_barrier  # causal 1k
  assert ha.default_config(128, 8192, short_walks="data").schedule_barrier
  assert ha.default_config(128, 8192).schedule_barrier
  assert ha.default_config(128).schedule_barrier
  assert ha.default_config(256, 8192, uniform_tiles=True).schedule_barrier
  # ...and the call resolves them from its own arguments (seen at the forward's decision
  # point: persistent, dynamic, overlap)
  seen = []
  real = ha._fwd_persistent

  def spy(cfg, *a, **k):
    seen.append((cfg.persistent, cfg.persistent_dynamic, cfg.overlap_softmax))
    return real(cfg, *a, **k)
  monkeypatch.setattr(ha, "_fwd_persistent", spy)
  for S, cases in (
      (256, [({}, (True, True, True)), (dict(is_causal=True), (True, True, True)),
             (dict(sliding_window=(64, 64)), (True, True, True)),
             (dict(segment_ids=jnp.zeros((1, 256), jnp.int32)), (True, True, False))]),
      (4096, [({}, (False, False, True)), (dict(is_causal=True), (False, False, True)),
              (dict(sliding_window=(64, 64)), (True, True, True)),
              (dict(sliding_window=(1024, 0)), (True, True, True)),
              (dict(sliding_window=(2047, None), is_causal=True), (True, True, True)),
              (dict(sliding_window=(2048, 1)), (False, False, False)),   # a band of 2050
              (dict(sliding_window=(None, 64)), (False, False, False)),
              (dict(segment_ids=jnp.zeros((1, 4096), jnp.int32)), (True, True, False))])):
    q = jax.ShapeDtypeStruct((1, S, 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, S, 1, 128), jnp.bfloat16)
    for kw, want in cases:
      seen.clear()
      jax.eval_shape(lambda q, k, v: ha.hopper_attention(q, k, v, **kw), q, kv, kv)
      assert seen and all(x == want for x in seen), (S, kw, seen)
  # the kv length decides, not the query length (short queries over a long cache)
  q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
  seen.clear()
  jax.eval_shape(lambda q, k, v: ha.hopper_attention(q, k, v), q, kv, kv)
  assert seen and all(x == (False, False, True) for x in seen), seen


def test_default_register_split_and_backward_rules(monkeypatch):
  # 240 / 24 registers only where the overlap runs on static ranges (seventh session)
  long_ = ha.default_config(128, 4096, static_ranges=True)
  assert (long_.consumer_registers, long_.producer_registers) == (240, 24)
  # ...with the 512-byte reduction scratch (fourteenth session); the others keep Mosaic's
  assert long_.reduction_scratch_bytes == 512
  assert ha.default_config(128, 1024, uniform_tiles=True).reduction_scratch_bytes is None
  for cfg in (ha.default_config(128, 1024, uniform_tiles=True), ha.default_config(128, 8192),
              ha.default_config(128, 1024, static_ranges=True), ha.default_config(128),
              ha.default_config(256, 8192, uniform_tiles=True)):
    assert (cfg.consumer_registers, cfg.producer_registers) == (232, 40), cfg
  # the fused backward wherever it applies (thirteenth session; segment ids from the
  # fourteenth): not with a block mask, nor for masked calls in interpret mode without the
  # XLA flag they need there
  assert ha.default_backward(128) == "fused"
  assert ha.default_backward(64, masked=True) == "fused"
  assert ha.default_backward(128, block_mask=True) == "mosaic"
  assert ha.default_backward(256) == "xla"
  # a config with one of the two-kernel backward's own switches keeps that backward
  for flag in ("bwd_persistent", "dkv_persistent", "bwd_schedule_barrier"):
    assert ha.default_backward(128, config=ha.HopperConfig(**{flag: True})) == "mosaic"
  assert ha.default_backward(128, config=ha.HopperConfig(persistent=True)) == "fused"
  monkeypatch.setenv("XLA_FLAGS", ha.INTERPRET_XLA_FLAG)
  assert ha.default_backward(128, masked=True, interpret=True) == "fused"
  monkeypatch.setenv("XLA_FLAGS", "")
  assert ha.default_backward(128, masked=True, interpret=True) == "mosaic"
  assert ha.default_backward(128, interpret=True) == "fused"
  monkeypatch.undo()
  # ...resolved by the call from its own arguments
  backward_of = lambda S, **kw: _resolved(S, **kw)[0]
  assert backward_of(8192) == "fused"
  assert backward_of(8192, interpret=True) == "fused"
  assert backward_of(8192, is_causal=True) == "fused"
  assert backward_of(8192, sliding_window=(128, 128)) == "fused"
  assert backward_of(8192, segment_ids=jnp.zeros((1, 8192), jnp.int32)) == "fused"
  assert backward_of(1024) == "fused"
  assert backward_of(1024, config=ha.HopperConfig(bwd_persistent=True)) == "mosaic"
  # short causal calls: the two-kernel backward with the persistent dK/dV kernel (sixteenth
  # session), from their default config; up to 1024 keys, not with a window / segment ids
  short_causal = ha.default_config(128, 1024, static_ranges=True)
  assert short_causal.dkv_persistent and not short_causal.bwd_persistent
  for cfg in (ha.default_config(128, 2048, static_ranges=True),
              ha.default_config(128, 1024, uniform_tiles=True),
              ha.default_config(128, 1024, short_walks="band"),
              ha.default_config(128, 1024, short_walks="data"), ha.default_config(128)):
    assert not cfg.dkv_persistent, cfg
  assert backward_of(1024, is_causal=True) == "mosaic"
  assert backward_of(512, is_causal=True, q_offset=128) == "mosaic"
  assert backward_of(2048, is_causal=True) == "fused"
  # ...measured at q_len = kv_len: many queries on few keys keep the fused backward
  assert not ha.default_config(128, 1024, static_ranges=True, q_len=4096).dkv_persistent
  assert ha.default_config(128, 1024, static_ranges=True, q_len=256).dkv_persistent
  assert backward_of(1024, is_causal=True, sliding_window=(100, 0)) == "fused"
  assert backward_of(1024, is_causal=True, segment_ids=jnp.zeros((1, 1024), jnp.int32)) == "fused"
  # ...and naming the fused / XLA backward drops the switch from that default config (no
  # refusal: the call asked for no config)
  named_of = lambda backward: _resolved(1024, is_causal=True, backward=backward)
  for named in ("fused", "xla"):
    bwd, cfg = named_of(named)
    assert bwd == named and not cfg.dkv_persistent
    assert cfg == dataclasses.replace(short_causal, dkv_persistent=False)
  bwd, cfg = named_of("mosaic")
  assert bwd == "mosaic" and cfg == short_causal
  # ...and a call that names another backward with such a switch is refused, not ignored
  for named in ("fused", "xla"):
    for flag in ("bwd_persistent", "dkv_persistent", "bwd_schedule_barrier"):
      with pytest.raises(ValueError, match=f"'{named}' backward.*cannot honour.*{flag}.*"
                                           "'mosaic' backward"):
        backward_of(1024, backward=named, config=ha.HopperConfig(**{flag: True}))
  assert backward_of(8192, backward="xla") == "xla"
  # ...as is one whose call falls back to another backward (head_dim > 128: the XLA one), while
  # the default config's switches are dropped there
  at_d256 = lambda **kw: _resolved(1024, D=256, is_causal=True, **kw)
  bwd, cfg = at_d256()
  assert bwd == "xla" and not ha._mosaic_bwd_switches(cfg) and not cfg.fused_persistent
  for flag in ("dkv_persistent", "bwd_persistent"):
    with pytest.raises(ValueError, match=f"'xla' backward \\(named, or what this call falls "
                                         f"back to\\) cannot honour.*{flag}.*; drop them"):
      at_d256(config=dataclasses.replace(ha.default_config(256), **{flag: True}))
  assert at_d256(config=ha.default_config(256))[0] == "xla"   # no switch: fine


def test_default_short_dense_persistent_fused_backward():
  """Dense calls of up to 1024 keys and queries get the persistent fused backward
  (seventeenth session); masked ones, longer ones and many queries on few keys do not; a
  call naming another backward drops it from the default config and refuses it from its own;
  a config cannot ask for it together with a two-kernel switch."""
  short_dense = ha.default_config(128, 1024, uniform_tiles=True)
  assert short_dense.fused_persistent and short_dense.persistent
  assert short_dense.persistent_dynamic   # measured faster than the static split
  assert ha.default_config(64, 512, uniform_tiles=True).fused_persistent
  for cfg in (ha.default_config(128, 2048, uniform_tiles=True),
              ha.default_config(128, 1024, uniform_tiles=True, q_len=4096),
              ha.default_config(128, 1024, static_ranges=True),
              ha.default_config(128, 1024, short_walks="band"),
              ha.default_config(128, 1024, short_walks="data"), ha.default_config(128),
              ha.default_config(256, 1024, uniform_tiles=True)):
    assert not cfg.fused_persistent, cfg
  assert ha.default_backward(128, config=short_dense) == "fused"
  prepared = lambda S=1024, **kw: _resolved(S, **kw)
  bwd, cfg = prepared()
  assert bwd == "fused" and cfg == short_dense
  assert not prepared(T=4096)[1].fused_persistent
  assert not prepared(is_causal=True)[1].fused_persistent
  for named in ("mosaic", "xla"):
    bwd, cfg = prepared(backward=named)
    assert bwd == named and cfg == dataclasses.replace(short_dense, fused_persistent=False)
    with pytest.raises(ValueError, match=f"'{named}' backward.*cannot honour.*fused_persistent"):
      prepared(backward=named, config=ha.HopperConfig(fused_persistent=True))
  # ...or what the call falls back to (a block mask takes the two-kernel backward)
  from pallas_kernels import from_dense
  with pytest.raises(ValueError, match="'mosaic' backward.*fused_persistent"):
    prepared(config=ha.HopperConfig(fused_persistent=True),
             block_sparsity=from_dense(np.ones((1, 1, 1024, 1024), bool), 128, 128))
  for flag in ("bwd_persistent", "dkv_persistent", "bwd_schedule_barrier"):
    with pytest.raises(ValueError, match=f"fused_persistent.*excludes.*{flag}"):
      ha.HopperConfig(fused_persistent=True, **{flag: True})


def test_fused_backward_in_interpret_mode_needs_the_scheduler_flag_for_masks(monkeypatch):
  # without it the interpreted kernel would hang on masked calls (see _dkv_call): refused at
  # trace time, naming the flag; with it (conftest.py sets it on CPU machines) traced
  q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
  for kw in (dict(is_causal=True), dict(sliding_window=(30, 30)),
             dict(segment_ids=jnp.zeros((1, 128), jnp.int32))):
    grad = jax.grad(lambda q, k, v: jnp.sum(ha.hopper_attention(
        q, k, v, backward="fused", interpret=True, **kw).astype(jnp.float32)))
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    with pytest.raises(NotImplementedError, match=ha.INTERPRET_XLA_FLAG):
      jax.eval_shape(grad, q, kv, kv)
    monkeypatch.setenv("XLA_FLAGS", ha.INTERPRET_XLA_FLAG)
    jax.eval_shape(grad, q, kv, kv)


# --------------------------------------------------------------------------------------------
# Interpret-mode runs of the kernels (subprocess, timeout).
# --------------------------------------------------------------------------------------------
_CASE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {root!r})
    from pallas_kernels import hopper_attention as ha
    from pallas_kernels.hopper_reference import hopper_attention_reference as ref
    c = json.loads({case!r})
    B, T, S, N, K, D = c["shape"]
    dt = jnp.dtype(c["dtype"])
    kw = dict(is_causal=c["causal"], q_offset=c["q_offset"], kv_offset=c["kv_offset"],
              sliding_window=tuple(c["window"]) if c["window"] else None)
    if c.get("seg"):
      kw["segment_ids"] = (jnp.asarray(c["seg"]["q"], jnp.int32),
                           jnp.asarray(c["seg"]["kv"], jnp.int32))
    q, k, v, do, dl, cfg = case_inputs(ha, c, dt)
    res = {{}}

    if c.get("via_jattn"):   # the pallas_mgpu backend (interpret on CPU) vs jattn's reference
      import jattn
      from jattn.backends import pallas_mgpu
      pallas_mgpu.register_backends()
      o, l = jattn.attention(q, k, v, return_lse=True, implementation="pallas_mgpu",
                             hopper_config=cfg, **kw)
      o2, l2 = jattn.attention(q, k, v, return_lse=True, implementation="reference", **kw)
    elif c["grad"]:
      # one interpret-mode forward serves the outputs and the backward (a second forward under
      # jax.grad would double the case's run time)
      (o, l), kern_vjp = jax.vjp(
          lambda q, k, v: ha.hopper_attention(q, k, v, return_lse=True, interpret=True,
                                              config=cfg, backward=c["grad"], **kw), q, k, v)
      if c.get("races"):
        res["races"] = races_found()
      o2, l2 = ref(q, k, v, return_lse=True, **kw)
    else:
      o, l = ha.hopper_attention(q, k, v, return_lse=True, interpret=True, config=cfg, **kw)
      if c.get("races"):
        res["races"] = races_found()
      o2, l2 = ref(q, k, v, return_lse=True, **kw)
    res["out"] = rel(o, o2)
    res["lse"] = rel(l, l2)
    empty = ~np.isfinite(np.asarray(l2))
    res["empty_rows_zero"] = float(np.abs(np.asarray(o, np.float32).transpose(0, 2, 1, 3)[empty]
                                          ).max()) if empty.any() else 0.0
    res["n_empty_rows"] = int(empty.sum())   # a count, not an error
    if c["grad"]:
      def loss(fn, q, k, v, **extra):
        o, l = fn(q, k, v, return_lse=True, **kw, **extra)
        return (jnp.sum(o.astype(jnp.float32) * do)
                + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0) * dl))
      if c.get("via_jattn"):
        g = jax.grad(lambda *a: loss(ha.hopper_attention, *a, interpret=True, config=cfg,
                                     backward=c["grad"]), argnums=(0, 1, 2))(q, k, v)
      else:   # the cotangents of `loss`: do (cast like o's convert) and dl where lse is finite
        g = kern_vjp((do.astype(o.dtype), jnp.where(jnp.isfinite(l), dl, 0.0).astype(l.dtype)))
      g2 = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
      if c.get("races"):   # any race in the backward's kernels (the dQ kernel runs first)
        res["races_bwd"] = races_found_any()
      for name, a, b in zip(("dq", "dk", "dv"), g, g2):
        res[name] = rel(a, b)
        res[name + "_finite"] = 0.0 if bool(jnp.all(jnp.isfinite(a))) else float("inf")
      if c.get("unseen_keys_from") is not None:   # keys no query meets: zero dk, dv
        j = c["unseen_keys_from"]
        res["dkv_unseen"] = float(max(np.abs(np.asarray(x[:, j:], np.float32)).max()
                                      for x in g[1:]))
      if empty.any():   # rows meeting no key: zero dq
        res["dq_empty_rows"] = float(np.abs(np.asarray(g[0], np.float32).transpose(
            0, 2, 1, 3)[empty]).max())
      if c.get("residual"):   # the same backward kernels fed (out, lse) instead of recomputing
        gr = ha.hopper_attention_residual_vjp(
            q, k, v, o, l, do, jnp.where(jnp.isfinite(l), dl, 0.0), interpret=True,
            config=cfg, backward=c["grad"], **kw)
        for name, a, b in zip(("dq", "dk", "dv"), gr, g2):
          res[name + "_residual"] = rel(a, b)
    print("RESULT", json.dumps(res))
""")


# Defined ahead of every case script: max |a - b| / max |b| over b's finite entries; inf when
# the non-finite patterns differ.
_SCRIPT_PRELUDE = textwrap.dedent("""
    import jax.numpy as jnp, numpy as np

    def case_inputs(ha, c, dt):
      # random q, k, v (dt), dO and dlse (f32) of the case's shape, its HopperConfig; the race
      # detector switched on when the case asks for it
      import jax
      B, T, S, N, K, D = c["shape"]
      ks = jax.random.split(jax.random.PRNGKey(c["seed"]), 5)
      q = jax.random.normal(ks[0], (B, T, N, D), dt)
      if c.get("qscale"):   # larger logits: a row's max then jumps by many powers of two
        q = (q.astype(jnp.float32) * c["qscale"]).astype(dt)
      k = jax.random.normal(ks[1], (B, S, K, D), dt)
      v = jax.random.normal(ks[2], (B, S, K, D), dt)
      do = jax.random.normal(ks[3], (B, T, N, D), jnp.float32)
      dl = jax.random.normal(ks[4], (B, N, T), jnp.float32)
      cfg = config_of(ha, c)
      if c.get("races"):
        detect_races(ha, dq_only=c["races"] == "dq")
      if c.get("mutate_half"):   # each half step computes the wrong half: the case must fail
        real = ha._half_block

        def wrong(st, q_base, rows, j, half):
          h, off = real(st, q_base, rows, j, half)
          return h, half - off
        ha._half_block = wrong
      return q, k, v, do, dl, cfg

    def config_of(ha, c):
      # the HopperConfig of a case dict
      return ha.HopperConfig(block_kv=c["block_kv"], stages=c["stages"],
                             schedule_barrier=c.get("sched", True),
                             persistent=c.get("persistent", False),
                             persistent_ctas=c.get("persistent_ctas"),
                             persistent_sync_per_tile=c.get("sync_per_tile", True),
                             persistent_dynamic=c.get("dynamic", False),
                             bwd_persistent=c.get("bwd_persistent", False),
                             dkv_persistent=c.get("dkv_persistent", False),
                             fused_persistent=c.get("fused_persistent", False),
                             bwd_stages=c.get("bwd_stages", 2),
                             overlap_softmax=c.get("overlap", False),
                             rescale_threshold=c.get("rescale", 0),
                             max_on_demand=c.get("max_on_demand", False),
                             bwd_schedule_barrier=c.get("bwd_sched", False),
                             fwd_half_steps=c.get("half_steps", False))

    def rel(a, b):
      a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
      b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
      fin = np.isfinite(b)
      if not np.array_equal(np.isfinite(a), fin):
        return float("inf")
      if not fin.any():
        return 0.0
      return float(np.abs(a[fin] - b[fin]).max() / max(np.abs(b[fin]).max(), 1e-6))

    def detect_races(ha, dq_only=False):
      # every later interpret-mode kernel (dq_only: only the dQ kernel) runs with the
      # interpreter's happens-before race detector (SMEM / TMA accesses of the warpgroups of a
      # CTA, ordered by the barriers)
      import functools
      api = ha._api()
      plain = api["InterpretParams"]
      racy = functools.partial(plain, detect_races=True)
      if dq_only:
        dq_call = ha._dq_call

        def traced_with_races(*a, **k):
          api["InterpretParams"] = racy
          try:
            return dq_call(*a, **k)
          finally:
            api["InterpretParams"] = plain
        ha._dq_call = traced_with_races
      else:
        api["InterpretParams"] = racy
      # remember the verdict of every kernel (the detector's state is reset per kernel)
      from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
      clear = gpu_callbacks._clear_shared_memory

      def clear_and_record():
        if gpu_callbacks._races is not None and gpu_callbacks._races.races_found:
          _RACY_KERNELS.append(1)
        clear()
      gpu_callbacks._clear_shared_memory = clear_and_record

    _RACY_KERNELS = []

    def races_found():
      # of the last interpret-mode kernel: an error (inf) if the detector found a race
      from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
      return float("inf") if gpu_callbacks.get_races().races_found else 0.0

    def races_found_any():
      # of every interpret-mode kernel since detect_races() (e.g. all of a backward's)
      from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
      last = gpu_callbacks._races is not None and gpu_callbacks._races.races_found
      return float("inf") if _RACY_KERNELS or last else 0.0
""")


# Each case compiles every kernel body once, not once per CTA and warpgroup (interpret_cache.py;
# case_runner.py installs it too: this line keeps a script runnable on its own, `python -c`)
_CACHE_LINE = ("import sys; sys.path.insert(0, {!r}); import interpret_cache; "
               "interpret_cache.install()\n").format(os.path.dirname(os.path.abspath(__file__)))


class _CaseRunner:
  """This pytest worker's case_runner.py process (one Python + JAX start for all its cases,
  not one per case): `run(script, timeout)` -> (printed text, traceback or None); raises
  TimeoutError (the process is then killed) or RuntimeError (it died)."""

  def __init__(self):
    import queue  # pylint: disable=g-import-not-at-top
    import tempfile  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    # XLA_FLAGS and JAX's persistent compilation cache (shared with the pytest workers): see
    # conftest.py
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
        [sys.executable, "-u", os.path.join(os.path.dirname(__file__), "case_runner.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
    self.replies = queue.Queue()

    def read(out=self.proc.stdout, replies=self.replies):
      for line in out:
        replies.put(line)
      replies.put(None)   # the process ended
    threading.Thread(target=read, daemon=True).start()

  def run(self, script: str, timeout: float):
    import queue  # pylint: disable=g-import-not-at-top
    self.proc.stdin.write(json.dumps({"script": script}) + "\n")
    self.proc.stdin.flush()
    try:
      line = self.replies.get(timeout=timeout)
    except queue.Empty:
      self.close()
      raise TimeoutError from None
    if line is None:
      self.proc.wait()
      self.stderr.seek(0)
      raise RuntimeError(f"rc={self.proc.returncode}:\n{self.stderr.read()[-4000:]}")
    reply = json.loads(line)
    return reply["stdout"], reply["error"]

  def close(self):
    self.proc.kill()
    self.proc.wait()


_RUNNER = []   # this worker's _CaseRunner, started on first use


def _run_case(case: dict, timeout: int = 600, script: str = _CASE_SCRIPT) -> dict:
  script = _CACHE_LINE + _SCRIPT_PRELUDE + script.format(root=ROOT, case=json.dumps(case))
  if not _RUNNER:
    _RUNNER.append(_CaseRunner())
  try:
    out, error = _RUNNER[0].run(script, timeout)
  except TimeoutError:
    _RUNNER.clear()
    pytest.fail(f"interpret-mode run timed out after {timeout}s (a deadlock: one simulated "
                f"warpgroup probably raised): {case}")
  except RuntimeError as e:   # the process died (a crash, not a Python error)
    _RUNNER.clear()
    pytest.fail(f"interpret-mode run failed ({e})")
  if error is not None:
    pytest.fail(f"interpret-mode run failed:\n{error[-4000:]}")
  for line in out.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  pytest.fail(f"interpret-mode run printed no result:\n{out[-4000:]}")


def _case(**kw):
  c = dict(shape=(1, 128, 128, 1, 1, 64), dtype="float16", causal=False, q_offset=0,
           kv_offset=0, window=None, seed=0, block_kv=64, stages=2, sched=True, grad=None)
  c.update(kw)
  return c


def _doc_ids(B, L, cuts, orphan=None):
  """[B, L] sorted document ids from per-batch cut positions; `orphan=(lo, hi)` gives rows
  [lo, hi) an id (99) that no key has (fully masked rows)."""
  ids = np.zeros((B, L), np.int32)
  for b, cs in enumerate(cuts):
    for x in cs:
      ids[b, x:] += 1
  if orphan:
    ids[:, orphan[0]:orphan[1]] = 99
  return ids.tolist()


INTERPRET_CASES = {
    # dense forward, f16, ping-pong schedule barrier, 2-slot ring
    "fwd_dense_f16": (_case(), 2e-2),
    # everything at once, forward + Mosaic backward: bf16, GQA (N=2, K=1), causal with a
    # query offset, left window, lengths that are not tile multiples (padding + kv mask),
    # lse and its gradient, 3-slot ring with more steps than slots; and the residual VJP
    # (the backward kernels from the forward's out / lse, as ring attention calls them)
    "fwdbwd_mosaic_all_features": (_case(shape=(1, 100, 130, 2, 1, 64), dtype="bfloat16",
                                         causal=True, q_offset=40, window=(90, None),
                                         stages=3, grad="mosaic", residual=True), 3e-2),
    # documents (segment ids) + causal, forward + Mosaic backward: 2 batch rows with different
    # document cuts that are not block multiples (so the range table is indexed per batch,
    # and blocks straddle documents), GQA (N=2, K=1), lse and its gradient, rows 60..69 of
    # the queries in a document no key has (out = 0, lse = -inf, finite gradients), 64-key
    # blocks so that every kernel has skipped, unmasked and masked blocks.
    "fwdbwd_mosaic_documents_causal": (_case(
        shape=(2, 200, 200, 2, 1, 64), dtype="bfloat16", causal=True, grad="mosaic",
        seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                 kv=_doc_ids(2, 200, [[37, 150], [90]]))), 3e-2),
    # the dK/dV kernel's ping-pong (HopperConfig.bwd_schedule_barrier): GQA (the head loop),
    # causal + offset, ragged lengths, 3-slot ring, race detector on
    "fwdbwd_mosaic_bwd_ping_pong": (_case(shape=(1, 100, 130, 2, 1, 64), dtype="bfloat16",
                                          causal=True, q_offset=40, stages=3, bwd_stages=3,
                                          grad="mosaic", bwd_sched=True, races=True), 3e-2),
    # the fused backward (dQ accumulated inside the dK/dV kernel; interpret mode replaces the
    # transposed-A product and the TMA reduce-add, see _dkv_call): GQA (the head loop),
    # causal + query offset, ragged lengths (padded rows and keys), D = 64 (consumer 0
    # computes all of dQ), 3-slot ring, race detector on; a two-sided window at D = 128
    # (each consumer half of dQ's columns); and unmasked, as the default picks it, over 4
    # query blocks (the dQ of step t - 1 issued in step t, the last one after the walk), race
    # detector on (dropping the wait for the other consumer's end of the previous step makes
    # these cases hang; with a dS^T buffer per step mod 2 and the wait after the store
    # instead, the detector flags the rewrite of a tile the other's dQ product still reads)
    "fwdbwd_fused_gqa_causal_ragged": (_case(shape=(1, 100, 130, 2, 1, 64), dtype="bfloat16",
                                             causal=True, q_offset=40, bwd_stages=3,
                                             grad="fused", races=True), 3e-2),
    "fwdbwd_fused_window_d128": (_case(shape=(1, 128, 128, 2, 2, 128), dtype="bfloat16",
                                       block_kv=128, window=(30, 30), grad="fused"), 3e-2),
    "fwdbwd_fused_d128": (_case(shape=(1, 256, 256, 2, 2, 128), dtype="bfloat16",
                                block_kv=128, grad="fused", races=True), 3e-2),
    # the fused backward with segment ids (the dK/dV kernel's per-tile query-block range
    # table, the documents mask on masked steps): the documents case above, race detector on
    "fwdbwd_fused_documents_causal": (_case(
        shape=(2, 200, 200, 2, 1, 64), dtype="bfloat16", causal=True, grad="fused", races=True,
        seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                 kv=_doc_ids(2, 200, [[37, 150], [90]]))), 3e-2),
    # consumers skipping the steps where none of their keys pairs with the query block
    # (HopperConfig.bwd_skip_empty_halves): a causal window of 64 keys over 2 KV tiles, GQA,
    # so that on both tiles consumer 1 skips its first step (the diagonal block lies left of
    # its keys) and on the first consumer 0 its last (the band has passed its keys) -
    # test_consumer_walk_skips_where_a_half_meets_no_query checks that these steps exist; in
    # the fused kernel (a zero dS^T tile for the other's dQ product, race detector on) and
    # the two-kernel backward's dK/dV kernel
    "fwdbwd_fused_window_skips": (_case(shape=(1, 256, 256, 2, 1, 64), dtype="bfloat16",
                                        causal=True, window=(63, 0), grad="fused",
                                        races=True), 3e-2),
    "fwdbwd_mosaic_window_skips": (_case(shape=(1, 256, 256, 2, 1, 64), dtype="bfloat16",
                                         causal=True, window=(63, 0), grad="mosaic"), 3e-2),
    # through jattn.attention(implementation="pallas_mgpu", segment_ids=...), forward + lse:
    # not causal, cross-attention lengths (T=100, S=300), UNSORTED random ids (the range
    # covers blocks the in-kernel equality mask must clear), f16, 128-key blocks.
    "fwd_jattn_unsorted_segments": (_case(
        shape=(1, 100, 300, 2, 2, 64), block_kv=128, via_jattn=True,
        seg=dict(q=np.random.default_rng(0).integers(0, 3, (1, 100)).tolist(),
                 kv=np.random.default_rng(1).integers(0, 3, (1, 300)).tolist())), 2e-2),
}


@requires_interpret
def test_interpret_cache_is_installed():
  """The interpret-mode kernel tests rely on interpret_cache.py (each kernel body compiled once,
  not per CTA and warpgroup: ~3x of the CI's test time, twenty-second session). Where this jax's
  interpreter has no `_run_jaxpr` to wrap, this fails rather than let CI slow down unnoticed:
  check whether the new jax still recompiles per CTA and adapt or drop the cache."""
  import interpret_cache
  from jax._src.pallas.mosaic.interpret import thread_map
  assert interpret_cache.install()
  assert thread_map._run_jaxpr.__module__ == interpret_cache.__name__  # pylint: disable=protected-access


def test_case_runner_isolates_cases_and_is_replaced_after_a_timeout():
  """The long-lived case process (case_runner.py): a case's patches of the kernel module and
  the interpreter (the race detector's hooks) and of sys.path are undone before the next case;
  sys.exit(0) ends a case normally; an error comes back as a traceback; a case that hangs is
  killed at its timeout and the next case gets a new process."""
  r = _CaseRunner()
  try:
    patch = textwrap.dedent("""
        import sys
        from pallas_kernels import hopper_attention as ha
        ha._api()["InterpretParams"] = "patched"
        ha._dq_call = "patched"
        ha.ADDED_BY_A_CASE = 1
        sys.path.insert(0, "/a/case/path")
        print("RESULT 1")
        sys.exit(0)
        """)
    assert r.run(patch, 120) == ("RESULT 1\n", None)
    check = textwrap.dedent("""
        import sys
        from pallas_kernels import hopper_attention as ha
        print(ha._api()["InterpretParams"] != "patched", callable(ha._dq_call),
              hasattr(ha, "ADDED_BY_A_CASE"), "/a/case/path" in sys.path)
        """)
    assert r.run(check, 120) == ("True True False False\n", None)
    out, error = r.run("raise ValueError('from the case')", 120)
    assert out == "" and "ValueError: from the case" in error
    with pytest.raises(TimeoutError):
      r.run("import time; time.sleep(60)", 2)
    assert r.proc.poll() is not None   # killed
  finally:
    r.close()


@requires_interpret
@pytest.mark.parametrize("name", sorted(INTERPRET_CASES))
def test_interpret_mode(name):
  case, tol = INTERPRET_CASES[name]
  res = _run_case(case)
  for key, err in res.items():
    if not key.startswith("n_"):
      assert err <= tol, (name, key, err, res)
  if "documents" in name:   # the case must really have fully masked rows
    assert res["n_empty_rows"] > 0, res


_DELTA_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {root!r})
    from pallas_kernels import hopper_attention as ha
    from pallas_kernels.hopper_reference import hopper_attention_reference as ref
    c = json.loads({case!r})
    B, T, S, N, K, D = c["shape"]
    dt = jnp.bfloat16
    kw = dict(is_causal=c["causal"], q_offset=c.get("q_offset", 0),
              kv_offset=c.get("kv_offset", 0),
              sliding_window=tuple(c["window"]) if c.get("window") else None)
    if c.get("seg"):
      kw["segment_ids"] = (jnp.asarray(c["seg"]["q"], jnp.int32),
                           jnp.asarray(c["seg"]["kv"], jnp.int32))
    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    q = jax.random.normal(ks[0], (B, T, N, D), dt)
    k = jax.random.normal(ks[1], (B, S, K, D), dt)
    v = jax.random.normal(ks[2], (B, S, K, D), dt)
    # bwd_persistent: the persistent dQ kernel, `persistent_ctas` CTAs, race detector on
    cfg = ha.HopperConfig(bwd_persistent=c.get("bwd_persistent", False),
                          persistent_ctas=c.get("persistent_ctas"),
                          bwd_stages=c.get("bwd_stages", 2),
                          persistent_dynamic=c.get("dynamic", False))
    if c.get("races"):
      detect_races(ha)
    st, _, (qp, kp, vp, seg, _), _ = ha._prepare(q, k, v, interpret=True, config=cfg, **kw)
    Tp = st.Tp
    # O and dO random on every row, padded ones included (the kernel's math is row-local)
    out = jax.random.normal(ks[3], (B, Tp, N, st.D), jnp.float32 if c["out_f32"] else dt)
    do = jax.random.normal(ks[4], (B, Tp, N, st.D), dt)
    dlse2 = jax.random.normal(ks[5], (B, N, Tp), jnp.float32) if c["dlse"] else None
    _, lse = ref(q, k, v, return_lse=True, **kw)
    lse2 = jnp.pad(lse * ha.LOG2E, ((0, 0), (0, 0), (0, Tp - T)), constant_values=-jnp.inf)
    lse_b = jnp.where(lse2 == -jnp.inf, jnp.inf, lse2)
    dq, delta = ha._dq_call(st, qp, kp, vp, do, out, lse_b, dlse2, seg=seg)
    races = races_found() if c.get("races") else None
    # the kernel stages O in q's dtype
    want = jnp.einsum("btnd,btnd->bnt", out.astype(dt).astype(jnp.float32),
                      do.astype(jnp.float32), precision="highest")
    if dlse2 is not None:
      want = want - dlse2 * ha.LOG2E
    delta, want = np.asarray(delta, np.float64), np.asarray(want, np.float64)
    dq_x = ha._bwd_xla(st, qp, kp, vp, do, lse_b, jnp.asarray(want, jnp.float32), seg)[0]
    a = np.asarray(dq[:, :T], np.float64)
    b = np.asarray(dq_x[:, :T], np.float64)
    res = dict(shape=list(delta.shape), finite=bool(np.isfinite(delta).all()),
               delta=float(np.abs(delta - want).max() / np.abs(want).max()),
               dq=float(np.abs(a - b).max() / np.abs(b).max()),
               persistent=ha._dq_persistent(cfg, st.D, 2, len(st.q_sides), len(st.kv_sides),
                                            dlse2 is not None))
    if races is not None:
      res["races"] = races
    # rows meeting no key: dQ exactly zero (the kernel's and the dense one's)
    empty = ~np.isfinite(np.asarray(lse))   # [B, N, T]
    res["n_empty_rows"] = int(empty.sum())
    res["dq_empty_rows"] = (float(np.abs(a.transpose(0, 2, 1, 3)[empty]).max())
                            if empty.any() else 0.0)
    print("RESULT", json.dumps(res))
""")

DELTA_CASES = {
    # T = 100 (padded to 128), GQA, causal, lse cotangent, O arriving as f32 (residual VJP)
    "padded_gqa_dlse_f32_out": dict(shape=(1, 100, 130, 2, 1, 64), causal=True, dlse=True,
                                    out_f32=True),
    # documents, D = 128, no lse cotangent, 2 batch rows
    "segments_d128": dict(shape=(2, 100, 100, 1, 1, 128), causal=False, dlse=False,
                          out_f32=False,
                          seg=dict(q=_doc_ids(2, 100, [[37, 70], [60]]),
                                   kv=_doc_ids(2, 100, [[37, 70], [60]]))),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(DELTA_CASES))
def test_dq_kernel_writes_delta(name):
  """The dQ kernel's second output, delta = rowsum(dO * O) - dlse * log2(e), against an
  einsum, on random O / dO (padded rows too), and its dQ against the dense backward."""
  case = DELTA_CASES[name]
  res = _run_case(case, script=_DELTA_SCRIPT)
  B, T, _, N = case["shape"][:4]
  assert res["shape"] == [B, N, -(-T // 128) * 128], res
  assert res["finite"], res
  assert res["delta"] <= 1e-5, res
  assert res["dq"] <= 2e-2, res
  assert res["dq_empty_rows"] == 0.0, res


# --------------------------------------------------------------------------------------------
# Persistent dQ kernel (HopperConfig(bwd_persistent=True, persistent_ctas=n)): n CTAs, each
# looping over several (head, q tile, batch) work items with the K/V ring and the producer
# carried across tiles, Q / dO double-buffered, the next tile's inputs loaded during the
# current one, the delta / dQ stores not awaited. The dQ kernel alone (_DELTA_SCRIPT: dQ against
# the dense backward, delta against an einsum, random O / dO) with the race detector on; every
# case has more work items than CTAs, not a multiple of them. The whole backward with it:
# PERSISTENT_BWD_CASES below.
# --------------------------------------------------------------------------------------------
def _dqcase(ctas, **kw):
  c = dict(bwd_persistent=True, persistent_ctas=ctas, races=True, dlse=True, out_f32=False,
           causal=False)
  c.update(kw)
  return c


PERSISTENT_DQ_CASES = {
    # causal + q offset + left window, ragged lengths (T=300, S=330), GQA (N=2, K=1), lse
    # cotangent, O as f32; 6 items on 4 CTAs; 3-slot ring (so tiles start mid-ring)
    "causal_gqa_offset_window_ragged_dlse": _dqcase(
        4, shape=(1, 300, 330, 2, 1, 64), causal=True, q_offset=40, window=(90, None),
        bwd_stages=3, out_f32=True),
    # documents + causal, 2 batch rows (the range table read per work item), GQA, rows 60..69
    # in a document no key has (dQ 0); 8 items on 3 CTAs; no lse cotangent
    "documents_empty_rows": _dqcase(
        3, shape=(2, 200, 200, 2, 1, 64), causal=True, dlse=False,
        seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                 kv=_doc_ids(2, 200, [[37, 150], [90]]))),
    # tiles with zero KV steps (causal, kv_offset 150: query tile 0 sees no key): dQ 0 and
    # delta still written; 8 items on 3 CTAs, empty and 2-step tiles interleaved
    "zero_step_tiles": _dqcase(3, shape=(2, 256, 128, 2, 1, 64), causal=True, kv_offset=150),
}


@requires_interpret
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", sorted(PERSISTENT_DQ_CASES))
def test_interpret_persistent_dq(name, dynamic):
  # dynamic: the dynamic scheduler's handoff (HopperConfig(persistent_dynamic=True); static
  # items in interpret mode, see DYNAMIC_CASES), its item slots in the f32 buffer's extra row
  # (behind the dlse row where the case has an lse cotangent)
  case = dict(PERSISTENT_DQ_CASES[name], dynamic=dynamic)
  B, T, _, N = case["shape"][:4]
  items = B * N * -(-T // 128)
  assert items > case["persistent_ctas"] and items % case["persistent_ctas"], "uneven split"
  res = _run_case(case, script=_DELTA_SCRIPT)
  assert res["persistent"], res
  assert res["races"] == 0.0, res
  assert res["shape"] == [B, N, -(-T // 128) * 128], res
  assert res["finite"], res
  assert res["delta"] <= 1e-5, res
  assert res["dq"] <= 2e-2, res
  assert res["dq_empty_rows"] == 0.0, res
  if name != "causal_gqa_offset_window_ragged_dlse":
    assert res["n_empty_rows"] > 0, res
  if name == "zero_step_tiles":   # whole query tiles without a key
    assert res["n_empty_rows"] >= B * N * 128, res


# --------------------------------------------------------------------------------------------
# block_sparsity + mask_fn (the three kernels' list walks), against a dense f32 reference.
# --------------------------------------------------------------------------------------------
_SPARSE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {root!r})
    from pallas_kernels import hopper_attention as ha, from_dense
    from pallas_kernels.hopper_reference import hopper_attention_reference as ref
    c = json.loads({case!r})
    B, T, S, N, K, D = c["shape"]
    dt = jnp.dtype(c["dtype"])
    qo, ko, P, C = c["q_offset"], c["kv_offset"], c.get("P", 0), c.get("C", 1)

    def prefix_lm(b, h, q, kv, qv, kvv):   # `~` goes through the kernel's rewrite of `not`
      return ~((kv > q) & (kv >= P))

    def chunked_causal(b, h, q, kv, qv, kvv):   # head 1 also sees a prefix (per-head lists)
      return ((q // C == kv // C) & (kv <= q)) | (kv < P + 1000 * (h - 1))

    def ids(b, h, q, kv, qv, kvv):   # ids equal, and the key's flag (a [1, S] array) set
      return (qv[0] == kvv[0]) & (kvv[1] != 0)

    mask_fn = dict(prefix_lm=prefix_lm, chunked_causal=chunked_causal, ids=ids)[c["mask"]]
    rng = np.random.default_rng(c["seed"])
    q_side, kv_side = (), ()
    if c["mask"] == "ids":
      q_ids = rng.integers(0, 3, (B, T)).astype(np.int32)
      q_ids[:, T // 2:T // 2 + 9] = 7            # rows meeting no key: out 0, lse -inf
      q_side = (jnp.asarray(q_ids),)
      kv_side = (jnp.asarray(rng.integers(0, 3, (B, S)), jnp.int32),
                 jnp.asarray(rng.random((1, S)) < 0.8, jnp.int32))

    # dense mask: mask_fn on the full position grid, per (b, h)
    qpos = jnp.broadcast_to(qo + jnp.arange(T, dtype=jnp.int32)[:, None], (T, S))
    kpos = jnp.broadcast_to(ko + jnp.arange(S, dtype=jnp.int32)[None, :], (T, S))

    def dense_bh(b, h):
      row = lambda a: a[b if a.shape[0] > 1 else 0]
      qv = tuple(jnp.broadcast_to(row(a)[:, None], (T, S)) for a in q_side)
      kvv = tuple(jnp.broadcast_to(row(a)[None, :], (T, S)) for a in kv_side)
      return jnp.broadcast_to(mask_fn(b, h, qpos, kpos, qv, kvv), (T, S))
    dense = jax.vmap(lambda b: jax.vmap(lambda h: dense_bh(b, h))(jnp.arange(N)))(
        jnp.arange(B))
    dense = np.asarray(dense)
    Bm, Hm = c["lists"]
    assert (dense == dense[:Bm, :Hm]).all()   # the lists' broadcast is exact
    bs = from_dense(dense[:Bm, :Hm], 128, 128)
    kw = dict(q_offset=qo, kv_offset=ko, block_sparsity=bs, mask_fn=mask_fn, q_side=q_side,
              kv_side=kv_side)
    q, k, v, do, dl, cfg = case_inputs(ha, c, dt)
    kern = lambda q, k, v: ha.hopper_attention(q, k, v, return_lse=True, interpret=True,
                                               config=cfg, **kw)
    dense_ref = lambda q, k, v: ref(q, k, v, return_lse=True, q_offset=qo, kv_offset=ko,
                                    mask=dense)

    (o, l), vjp = jax.vjp(kern, q, k, v)   # runs the forward kernel
    (o2, l2), vjp2 = jax.vjp(dense_ref, q, k, v)
    res = dict(out=rel(o, o2), lse=rel(l, l2))
    if c.get("races"):
      res["races"] = races_found()
    empty = ~np.isfinite(np.asarray(l2))
    res["n_empty_rows"] = int(empty.sum())
    res["n_partial"] = int(np.asarray(bs.kv_num_blocks).sum())
    res["n_full"] = int(np.asarray(bs.full_kv_num_blocks).sum())
    res["empty_rows_zero"] = float(np.abs(np.asarray(o, np.float32).transpose(0, 2, 1, 3)[empty]
                                          ).max()) if empty.any() else 0.0
    if c.get("fwd_only"):
      print("RESULT", json.dumps(res))
      sys.exit(0)
    dlm = jnp.where(empty, 0.0, dl)
    g = vjp((do.astype(o.dtype), dlm))
    if c.get("races"):   # any race in the backward's kernels (the dQ kernel runs first)
      res["races_bwd"] = races_found_any()
    g2 = vjp2((do.astype(o2.dtype), dlm))
    for name, a, b in zip(("dq", "dk", "dv"), g, g2):
      res[name] = rel(a, b)
    if empty.any():   # rows meeting no key: zero dq
      res["dq_empty_rows"] = float(np.abs(np.asarray(g[0], np.float32).transpose(0, 2, 1, 3)[
          empty]).max())
    if c.get("residual"):
      gr = ha.hopper_attention_residual_vjp(q, k, v, o, l, do, dlm, interpret=True, config=cfg,
                                            **kw)
      for name, a, b in zip(("dq", "dk", "dv"), gr, g2):
        res[name + "_residual"] = rel(a, b)
    print("RESULT", json.dumps(res))
""")


def _sparse_case(**kw):
  c = dict(shape=(1, 256, 256, 1, 1, 64), dtype="bfloat16", q_offset=0, kv_offset=0, seed=0,
           block_kv=128, stages=2, lists=(1, 1))
  c.update(kw)
  return c


SPARSE_CASES = {
    # prefix LM (a 40-key prefix + causal; q_offset 128): one full and one partial block per
    # query block; GQA (N=2, K=1) with head-shared lists; the residual VJP; 3-slot ring of
    # 64-key forward steps (2 per listed block)
    "prefix_lm_gqa": _sparse_case(shape=(1, 128, 256, 2, 1, 64), mask="prefix_lm", P=40,
                                  q_offset=128, block_kv=64, stages=3, residual=True),
    # chunked causal (`//` on the position tiles, chunks of 320); per-head lists (head 1 also
    # sees a 50-key prefix) with GQA: the dK/dV kernel walks each query head's own lists;
    # head 0's second query block lists nothing (rows out 0, lse -inf); T != S, neither a
    # multiple of 128, nonzero offsets
    # (with the dK/dV kernel's ping-pong, HopperConfig.bwd_schedule_barrier: per-head step
    # counts that differ, the same for both consumers)
    "chunked_causal_per_head_offsets": _sparse_case(
        shape=(1, 150, 200, 2, 1, 64), dtype="float16", mask="chunked_causal", C=320, P=50,
        q_offset=192, kv_offset=40, lists=(1, 2), seed=1, bwd_sched=True),
    # side arrays: random ids per batch row (per-batch lists, B=2) and a [1, S] key flag;
    # rows whose id no key has (fully masked: out 0, lse -inf, zero gradients)
    "side_arrays_per_batch": _sparse_case(shape=(2, 128, 160, 1, 1, 64), mask="ids",
                                          lists=(2, 1), seed=2),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(SPARSE_CASES))
def test_interpret_block_sparsity(name):
  res = _run_case(SPARSE_CASES[name], script=_SPARSE_SCRIPT)
  tol = 3e-2
  for key, err in res.items():
    if not key.startswith("n_"):
      assert err <= tol, (name, key, err, res)
  assert res["n_partial"] > 0, res
  if name != "side_arrays_per_batch":
    assert res["n_full"] > 0, res
  if name != "prefix_lm_gqa":
    assert res["n_empty_rows"] > 0, res


def test_block_sparsity_refusals():
  import jax.numpy as jnp
  from pallas_kernels import from_dense
  q = jnp.zeros((1, 200, 2, 64), jnp.bfloat16)
  kv = jnp.zeros((1, 300, 1, 64), jnp.bfloat16)
  bs = from_dense(np.ones((1, 1, 200, 300), bool), 128, 128)
  mask_fn = lambda b, h, i, j, qv, kvv: j <= i
  ok = dict(block_sparsity=bs, mask_fn=mask_fn, interpret=True)
  ha._prepare(q, kv, kv, **ok)   # accepted
  ha._prepare(q, kv, kv, **ok, config=ha.HopperConfig(block_kv=64))
  cases = [
      (dict(block_sparsity=from_dense(np.ones((1, 1, 200, 300), bool), 64, 128)),
       r"block_sparsity.kv_num_blocks has shape \(1, 1, 4\), expected \(1, 1, 2\) for "
       r"T=200, S=300, block=\(128, 128\)"),
      (dict(block_sparsity=from_dense(np.ones((1, 1, 200, 200), bool), 128, 128)),
       r"block_sparsity.kv_indices has shape"),
      (dict(block_sparsity=from_dense(np.ones((3, 1, 200, 300), bool), 128, 128)),
       r"batch/head dims \(3, 1\) must be 1 or \(1, 2\)"),
      (dict(config=ha.HopperConfig(block_kv=256, stages=1)), r"HopperConfig.block_kv"),
      (dict(is_causal=True), "excludes is_causal"),
      (dict(sliding_window=(64, 0)), "excludes is_causal, sliding_window"),
      (dict(segment_ids=jnp.zeros((1, 200), jnp.int32)), "segment_ids"),
      (dict(backward="fused"), "backward='fused' does not take block_sparsity"),
      (dict(backward="xla"), "backward='xla' does not take block_sparsity"),
      (dict(q_side=(jnp.zeros((1, 300), jnp.int32),)), r"q side array must be \[B\|1, T\]"),
      (dict(kv_side=(jnp.zeros((2, 300), jnp.int32),)), r"kv side array must be"),
  ]
  for extra, msg in cases:
    with pytest.raises(ValueError, match=msg):
      ha._prepare(q, kv, kv, **{**ok, **extra})
  with pytest.raises(ValueError, match="need a block_sparsity"):
    ha._prepare(q, kv, kv, mask_fn=mask_fn)
  # SMEM accounting of the side arrays (int32 values of the Q tiles and of the K ring)
  cfg = ha.default_config(128)
  assert (ha._fwd_smem_bytes(cfg, 128, 2, q_sides=1, kv_sides=2)
          - ha._fwd_smem_bytes(cfg, 128, 2)) == (128 + 2 * cfg.stages * 128) * 4
  assert ha._dq_smem_bytes(cfg, 64, 2, True) == ha._dq_smem_bytes(cfg, 64, 2, q_sides=1,
                                                                    kv_sides=1)


# --------------------------------------------------------------------------------------------
# Persistent forward (HopperConfig(persistent=True, persistent_ctas=n)): n CTAs, each looping
# over several (head, q tile, batch) work items with the K/V ring, the ping-pong and the
# producer carried across tiles and Q double-buffered. Forward + lse, with the interpreter's
# happens-before race detector on ("races": inf if it found one); its phase checks (every
# barrier phase observed by every waiter) run in every interpret-mode case. Every case has more
# work items than CTAs.
# --------------------------------------------------------------------------------------------
def _run_raced_case(name, case, tol):
  """A forward case (_CASE_SCRIPT, or _SPARSE_SCRIPT for block lists) with the race detector
  on: no race, every error within `tol`. -> the result dict."""
  res = _run_case(case, script=_SPARSE_SCRIPT if "mask" in case else _CASE_SCRIPT)
  assert "races" in res, res
  for key, err in res.items():
    if not key.startswith("n_"):
      assert err <= tol, (name, key, err, res)
  return res


def _pcase(ctas, **kw):
  return _case(persistent=True, persistent_ctas=ctas, races=True, **kw)


PERSISTENT_CASES = {
    # dense, 6 work items on 4 CTAs (2, 2, 1, 1); 4 KV steps per tile (S=192 padded to 256)
    # on a 3-slot ring, so a CTA's second tile starts mid-ring (slot 1); f16
    "dense_uneven": (_pcase(4, shape=(1, 256, 192, 3, 3, 64), stages=3), 2e-2),
    # causal + q offset + left window, ragged lengths (T=300, S=330), GQA (N=2, K=1), bf16,
    # 3-slot ring; longest tiles first
    "causal_gqa_window_ragged": (_pcase(4, shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16",
                                        causal=True, q_offset=40, window=(90, None),
                                        stages=3), 3e-2),
    # documents (segment ids: the per-(batch, tile) range table read per work item) + causal,
    # 2 batch rows, GQA, rows 60..69 in a document no key has (out 0, lse -inf); 8 items on 3
    "documents_empty_rows": (_pcase(
        3, shape=(2, 200, 200, 2, 1, 64), dtype="bfloat16", causal=True, stages=3,
        seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                 kv=_doc_ids(2, 200, [[37, 150], [90]]))), 3e-2),
    # no ping-pong schedule barrier; causal (4- and 2-step tiles on a 3-slot ring), 4 items
    # on 3 CTAs
    "no_schedule_barrier": (_pcase(3, shape=(1, 256, 256, 2, 2, 64), causal=True,
                                   sched=False, stages=3), 2e-2),
    # the ping-pong's extra round once per CTA instead of per tile (persistent_sync_per_tile);
    # causal tiles of 4 and 2 steps, 4 items on 3 CTAs
    "sync_once_per_cta": (_pcase(3, shape=(1, 256, 256, 2, 2, 64), causal=True,
                                 sync_per_tile=False, stages=3), 2e-2),
    # tiles with zero KV blocks: causal with kv_offset 150, so query tile 0 (positions 0..127)
    # sees no key (n = 0: out 0, lse -inf, no ring traffic); in each of the 2 CTAs the empty
    # tiles alternate with 2-step tiles (causal order: tile 1, then tile 0) on a 3-slot ring
    "zero_block_tiles": (_pcase(2, shape=(2, 256, 128, 2, 1, 64), causal=True, kv_offset=150,
                                stages=3), 2e-2),
    # BlockMask lists + mask_fn (SPARSE_CASES' chunked_causal_per_head_offsets): per-head lists,
    # head 0's second query block lists nothing (a zero-step tile between two others: all 4
    # items on 1 CTA), T != S, offsets; forward only
    "sparse_lists_mask_fn": (_sparse_case(
        shape=(1, 150, 200, 2, 1, 64), dtype="float16", mask="chunked_causal", C=320, P=50,
        q_offset=192, kv_offset=40, lists=(1, 2), seed=1, persistent=True, persistent_ctas=1,
        races=True, fwd_only=True), 3e-2),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(PERSISTENT_CASES))
def test_interpret_persistent(name):
  case, tol = PERSISTENT_CASES[name]
  B, T, _, N = case["shape"][:4]
  assert B * N * -(-T // 128) > case["persistent_ctas"], "more work items than CTAs"
  res = _run_raced_case(name, case, tol)
  if name in ("documents_empty_rows", "sparse_lists_mask_fn"):
    assert res["n_empty_rows"] > 0, res
  if name == "zero_block_tiles":   # whole query tiles without a key
    assert res["n_empty_rows"] >= B * N * 128, res


# The persistent forward with the dynamic scheduler's handoff (HopperConfig(persistent_dynamic=
# True)): the producer publishes each CTA's next work item through shared memory and the
# consumers take it (interpret mode hands out the static split's items: no atomics there; the
# atomic itself runs in the GPU tests). Race detector and barrier-phase checks on; the cases
# cover uneven splits, zero-step tiles between others, documents, block lists, the per-CTA
# ping-pong round and the overlapped softmax.
DYNAMIC_CASES = {
    "dense_uneven": PERSISTENT_CASES["dense_uneven"],
    "documents_empty_rows": PERSISTENT_CASES["documents_empty_rows"],
    "zero_block_tiles_overlap": (_pcase(2, shape=(2, 256, 128, 2, 1, 64), causal=True,
                                        kv_offset=150, stages=3, overlap=True), 2e-2),
    "sync_once_per_cta": PERSISTENT_CASES["sync_once_per_cta"],
    "sparse_lists_mask_fn": PERSISTENT_CASES["sparse_lists_mask_fn"],
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(DYNAMIC_CASES))
def test_interpret_persistent_dynamic(name):
  case, tol = DYNAMIC_CASES[name]
  case = dict(case, dynamic=True)
  res = _run_raced_case(name, case, tol)
  if name in ("documents_empty_rows", "sparse_lists_mask_fn", "zero_block_tiles_overlap"):
    assert res["n_empty_rows"] > 0, res


def test_ref_kernels_run_without_refs_and_sequentially_under_vmap():
  # `_kernel_with_ref` (the fused backward's dQ sum, the dynamic scheduler's counter): the
  # launch makes its own Ref, which `_without_refs` discharges so that `custom_vmap` can hold
  # the call; under vmap it runs once per element of the batched arguments (pl.kernel has no
  # batching rule). Here with a plain stateful function in place of the kernel.
  ha = pytest.importorskip("pallas_kernels.hopper_attention")
  shapes = []

  def stateful(x, y, init):
    shapes.append((x.shape, y.shape))
    acc = jax.new_ref(init)
    acc[...] += x * 2.0
    acc[...] += y.sum()
    return (x[0],), jax.freeze(acc)
  g = ha._sequential_under_vmap(functools.partial(ha._without_refs, stateful))
  x = jnp.arange(12.0).reshape(3, 4)
  y = jnp.arange(5.0)
  (first,), acc = jax.jit(jax.vmap(g, in_axes=(0, None, None)))(x, y, jnp.ones(4))
  np.testing.assert_allclose(acc, 1.0 + x * 2.0 + y.sum())
  np.testing.assert_allclose(first, x[:, 0])
  assert shapes[-1] == ((4,), (5,)), shapes   # y stays unbatched, x is mapped row by row
  jaxpr = str(jax.make_jaxpr(jax.vmap(g, in_axes=(0, None, None)))(x, y, jnp.ones(4)))
  assert "new_ref" not in jaxpr and "mutable_array" not in jaxpr, jaxpr


def test_batch_folded_folds_vmap_into_the_batch():
  # `_batch_folded` (the fused backward under vmap): the mapped axis is folded into the batch
  # (one call with st.B = axis_size * B, no loop around the kernel: inside a loop its dQ sum's
  # reduce-adds came back lost on the H100), unmapped arguments broadcast, nested vmaps too.
  import dataclasses
  calls = []

  def call(st, x, y):
    calls.append((st.B, x.shape, y.shape))
    assert x.shape[0] == y.shape[0] == st.B
    return x * 2.0 + y.sum(axis=1, keepdims=True), x[:, :1]
  st = dataclasses.replace(_st(128, 128, False, 0, 0, None, None), B=2)
  x = jnp.arange(24.0).reshape(3, 2, 4)
  y = jnp.arange(10.0).reshape(2, 5)
  f = jax.jit(jax.vmap(lambda x, y: ha._batch_folded(call, st, x, y), in_axes=(0, None)))
  out, first = f(x, y)
  np.testing.assert_allclose(out, x * 2.0 + y.sum(axis=1)[None, :, None])
  np.testing.assert_allclose(first, x[:, :, :1])
  assert calls[-1] == (6, (6, 4), (6, 5)), calls   # one call over 3 * 2 batch rows
  xx = jnp.stack([x, x + 1.0])   # nested: 2 x 3 x 2
  out, _ = jax.vmap(jax.vmap(lambda x, y: ha._batch_folded(call, st, x, y)),
                    in_axes=(0, None))(xx, jnp.stack([y] * 3))
  np.testing.assert_allclose(out, xx * 2.0 + y.sum(axis=1)[None, None, :, None])
  assert calls[-1][0] == 12, calls
  with pytest.raises(ValueError, match="block lists"):
    ha._batch_folded(call, dataclasses.replace(st, sparse=True), x[0], y)


@requires_interpret
@pytest.mark.parametrize("segments", [False, True])
def test_interpret_fused_backward_under_vmap(segments):
  # vmap of the gradient with backward="fused" (interpret mode: the dQ sum as a third output;
  # on the H100 the Ref launch, tests/test_gpu_hopper.py): the mapped axis folded into the
  # batch, k / v unmapped; against the reference's per-example gradients. With segment ids
  # mapped too (each example cut into documents elsewhere): their range tables are folded
  # into the batch with them.
  from pallas_kernels.hopper_reference import hopper_attention_reference as ref
  T, N, D = 128, 2, 64
  ks = jax.random.split(jax.random.PRNGKey(11), 4)
  q = jax.random.normal(ks[0], (3, 1, T, N, D), jnp.float16)
  k = jax.random.normal(ks[1], (1, T, N, D), jnp.float16)
  v = jax.random.normal(ks[2], (1, T, N, D), jnp.float16)
  w = jax.random.normal(ks[3], (3, 1, T, N, D), jnp.float32)
  cuts = [[30, 90], [64], [100]] if segments else [[], [], []]
  seg = jnp.asarray([_doc_ids(1, T, [c]) for c in cuts], jnp.int32)   # [3, 1, T]

  def loss(fn, **extra):
    def f(q, k, v, w, seg):
      kw = dict(segment_ids=seg) if segments else {}
      return jnp.sum(fn(q, k, v, **kw, **extra).astype(jnp.float32) * w)
    return f
  got = jax.vmap(jax.grad(loss(ha.hopper_attention, interpret=True, backward="fused"),
                          argnums=(0, 1, 2)), in_axes=(0, None, None, 0, 0))(q, k, v, w, seg)
  want = jax.vmap(jax.grad(loss(ref), argnums=(0, 1, 2)), in_axes=(0, None, None, 0, 0))(
      *(x.astype(jnp.float32) for x in (q, k, v)), w, seg)
  for a, b in zip(got, want):
    assert a.shape == b.shape
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max()


@requires_interpret
@pytest.mark.parametrize("which", ["out_only", "lse_only"])
def test_interpret_backward_with_a_symbolic_zero_cotangent(which):
  # The custom_vjp takes symbolic zeros: a loss on the output alone runs the backward without
  # an lse cotangent (dlse None: the dQ kernel loads none), a loss on lse alone with dO = 0.
  # Gradients against the reference's (f16 inputs, causal with T < S: no empty rows).
  from pallas_kernels.hopper_reference import hopper_attention_reference as ref
  B, T, S, N, K, D = 1, 128, 192, 2, 1, 64
  ks = jax.random.split(jax.random.PRNGKey(7), 4)
  q = jax.random.normal(ks[0], (B, T, N, D), jnp.float16)
  k = jax.random.normal(ks[1], (B, S, K, D), jnp.float16)
  v = jax.random.normal(ks[2], (B, S, K, D), jnp.float16)
  w = jax.random.normal(ks[3], (B, T, N, D), jnp.float32)
  kw = dict(is_causal=True, q_offset=S - T, return_lse=True)

  def loss(fn, **extra):
    def f(q, k, v):
      o, lse = fn(q, k, v, **kw, **extra)
      if which == "out_only":
        return jnp.sum(o.astype(jnp.float32) * w)
      return jnp.sum(lse * w[..., 0].transpose(0, 2, 1))
    return f
  got = jax.grad(loss(ha.hopper_attention, interpret=True), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(
      *(x.astype(jnp.float32) for x in (q, k, v)))
  for a, b in zip(got, want):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max()


# Forward with HopperConfig(overlap_softmax=True) (FA3's intra-warpgroup overlap: S_t and
# P_{t-1} V_{t-1} issued together, step 0 peeled, the last P V after the loop), forward + lse
# against the reference, race detector on.
OVERLAP_CASES = {
    # causal + q offset + left window, ragged lengths, GQA, bf16, 3-slot ring: masked and
    # unmasked sections, step 0 in a masked section
    "causal_gqa_window_ragged": (_case(shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16",
                                       causal=True, q_offset=40, window=(90, None), stages=3,
                                       overlap=True, races=True), 3e-2),
    # documents + causal, rows in a document no key has (out 0, lse -inf), 2 batch rows
    "documents_empty_rows": (_case(
        shape=(2, 200, 200, 2, 1, 64), dtype="bfloat16", causal=True, stages=3, overlap=True,
        races=True, seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                             kv=_doc_ids(2, 200, [[37, 150], [90]]))), 3e-2),
    # without the consumers' ping-pong, as the overlapped defaults run since the ninth session
    # (HopperConfig(schedule_barrier=False)): the same masked / unmasked sections
    "no_schedule_barrier_causal_gqa_window_ragged": (_case(
        shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16", causal=True, q_offset=40,
        window=(90, None), stages=3, overlap=True, sched=False, races=True), 3e-2),
    # FA4's lazy rescale (HopperConfig.rescale_threshold, the overlapped defaults' 8) on logits
    # x6, so that row maxima move by more than 2^8 in some unmasked steps and by less in
    # others (where P exceeds 1); f16 (P up to 2^8 in an f16 tile), ragged dense, GQA
    "lazy_rescale_dense_f16_ragged": (_case(
        shape=(1, 200, 330, 2, 1, 64), dtype="float16", stages=3, overlap=True, sched=False,
        rescale=8, qscale=6.0, races=True), 2e-2),
    # ...and with causal + offset + left window: masked steps (exact) between unmasked ones
    "lazy_rescale_causal_gqa_window_ragged": (_case(
        shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16", causal=True, q_offset=40,
        window=(200, None), stages=3, overlap=True, sched=False, rescale=8, qscale=6.0,
        races=True), 3e-2),
    # ...with the row max on demand (HopperConfig.max_on_demand, the long-call default): its
    # warp vote and branch are GPU-only (test_gpu_hopper.py); interpret mode takes the config
    # and runs the lazy rule, whose values the GPU branch reproduces
    "max_on_demand_causal_gqa_window_ragged": (_case(
        shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16", causal=True, q_offset=40,
        window=(200, None), stages=3, overlap=True, sched=False, rescale=8,
        max_on_demand=True, qscale=6.0, races=True), 3e-2),
    # persistent: tiles with zero KV steps (n = 0: neither the peeled step nor the last P V)
    # between 2-step tiles, the ring carried across tiles, 2 CTAs
    "persistent_zero_block_tiles": (_pcase(2, shape=(2, 256, 128, 2, 1, 64), causal=True,
                                           kv_offset=150, stages=3, overlap=True), 2e-2),
    # BlockMask lists + mask_fn with `~` (the rewrite of not): step 0 from the partial list or,
    # where a row lists no partial block, from the full list; a zero-step tile; forward only
    "sparse_lists_mask_fn": (_sparse_case(
        shape=(1, 150, 200, 2, 1, 64), dtype="float16", mask="chunked_causal", C=320, P=50,
        q_offset=192, kv_offset=40, lists=(1, 2), seed=1, block_kv=64, stages=3, overlap=True,
        races=True, fwd_only=True), 3e-2),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(OVERLAP_CASES))
def test_interpret_overlap_softmax(name):
  case, tol = OVERLAP_CASES[name]
  res = _run_raced_case(name, case, tol)
  if name in ("documents_empty_rows", "persistent_zero_block_tiles"):
    assert res["n_empty_rows"] > 0, res


# The overlapped forward's half last step (HopperConfig.fwd_half_steps; 128-key blocks): a
# consumer whose last block has a half all masked for its rows computes the other half only.
_HALF = dict(block_kv=128, overlap=True, sched=False, rescale=8, half_steps=True, races=True)
HALF_STEP_CASES = {
    # causal + q offset, ragged lengths, GQA, bf16: diagonals whose upper half is dead for
    # consumer 0 (and tiles whose last block is whole)
    "causal_gqa_offset_ragged": (_case(shape=(1, 300, 330, 2, 1, 64), dtype="bfloat16",
                                       causal=True, q_offset=40, **_HALF), 3e-2),
    # a two-sided window with a kv offset, D = 64, f16: last blocks cut by the right side
    "window_two_sided_kv_offset": (_case(shape=(1, 200, 330, 2, 2, 64), window=(100, 30),
                                         kv_offset=7, **_HALF), 2e-2),
    # dense, S = 300: the last block's upper half is all padding keys
    "dense_padding": (_case(shape=(1, 200, 300, 2, 2, 64), **_HALF), 2e-2),
    # the persistent forward with the dynamic scheduler (3 CTAs, items in interpret mode's
    # static split), the row max on demand's config and larger logits
    "persistent_dynamic_causal": (_case(shape=(2, 384, 384, 2, 1, 64), causal=True,
                                        persistent=True, persistent_ctas=3, dynamic=True,
                                        sync_per_tile=False, max_on_demand=True, qscale=4.0,
                                        **_HALF), 2e-2),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(HALF_STEP_CASES))
def test_interpret_half_steps(name):
  case, tol = HALF_STEP_CASES[name]
  _run_raced_case(name, case, tol)


@requires_interpret
def test_interpret_half_steps_fail_with_the_wrong_half():
  """The half-step cases can fail: with each half step computing the half it should drop,
  out and lse are off (T = 264, a shape no other case traces, so no cached trace of the
  right kernel stands in)."""
  case = _case(shape=(1, 264, 264, 1, 1, 64), causal=True, mutate_half=True,
               **dict(_HALF, races=False))
  res = _run_case(case)
  assert res["out"] > 0.05 and res["lse"] > 0.01, res


# The whole backward (forward kernel, persistent dQ kernel, dK/dV kernel) of block-sparse
# calls, against the dense reference (_SPARSE_SCRIPT), race detector on the dQ kernel.
PERSISTENT_BWD_CASES = {
    # BlockMask lists + mask_fn (SPARSE_CASES' chunked_causal_per_head_offsets): per-head lists,
    # head 0's second query block lists nothing (a zero-step tile between two others: all 4
    # items on 1 CTA), T != S, offsets, lse cotangent
    # (with the consumers' ping-pong, HopperConfig.bwd_schedule_barrier: its per-tile extra
    # rounds around the zero-step tile)
    "sparse_lists_mask_fn": _sparse_case(
        shape=(1, 150, 200, 2, 1, 64), dtype="float16", mask="chunked_causal", C=320, P=50,
        q_offset=192, kv_offset=40, lists=(1, 2), seed=1, bwd_persistent=True,
        persistent_ctas=1, races="dq", bwd_sched=True),
    # side arrays (one q, two kv: the persistent kernel's single int32 side buffer), per-batch
    # lists, rows meeting no key; 2 items on 1 CTA
    "sparse_side_arrays": _sparse_case(shape=(2, 128, 160, 1, 1, 64), mask="ids", lists=(2, 1),
                                       seed=2, bwd_persistent=True, persistent_ctas=1,
                                       races="dq"),
}


@requires_interpret
@pytest.mark.parametrize("name", sorted(PERSISTENT_BWD_CASES) + ["sparse_side_arrays_dynamic"])
def test_interpret_persistent_backward(name):
  if name.endswith("_dynamic"):   # the persistent forward and dQ kernels, dynamic scheduler
    case = dict(PERSISTENT_BWD_CASES[name[:-len("_dynamic")]], persistent=True, dynamic=True)
  else:
    case = PERSISTENT_BWD_CASES[name]
  res = _run_case(case, script=_SPARSE_SCRIPT)
  assert res["races_bwd"] == 0.0, res
  for key, err in res.items():
    if not key.startswith("n_"):
      assert err <= 3e-2, (name, key, err, res)
  assert res["n_empty_rows"] > 0, res
  assert res["dq_empty_rows"] == 0.0, res


# The persistent dK/dV kernel (HopperConfig(dkv_persistent=True, persistent_ctas=n)): n CTAs
# looping over (b, KV head, KV tile) work items, the Q / dO ring and the producer carried across
# items, K / V double-buffered and the next item's loaded during the current one, the dK / dV
# stores not awaited. The whole backward against the dense reference, race detector on every
# kernel; every case has more work items than CTAs, not a multiple of them; static split and
# the dynamic scheduler's handoff (static items in interpret mode).
def _dkvcase(ctas, **kw):
  return _case(dkv_persistent=True, persistent_ctas=ctas, races=True, grad="mosaic",
               dtype="bfloat16", **kw)


PERSISTENT_DKV_CASES = {
    # causal + q offset + left window, ragged lengths (T=300, S=330), GQA (N=2, K=1: the head
    # loop inside an item), 3-slot ring (items start mid-ring); 3 items on 2 CTAs
    "causal_gqa_window_ragged": _dkvcase(2, shape=(1, 300, 330, 2, 1, 64), causal=True,
                                         q_offset=40, window=(90, None), bwd_stages=3),
    # documents + causal, 2 batch rows (the range table read per item), rows 60..69 in a
    # document no key has; 4 items on 3 CTAs
    "documents_empty_rows": _dkvcase(
        3, shape=(2, 200, 200, 2, 1, 64), causal=True,
        seg=dict(q=_doc_ids(2, 200, [[37, 150], [90]], orphan=(60, 70)),
                 kv=_doc_ids(2, 200, [[37, 150], [90]]))),
    # causal, S > T: KV tiles 1 and 2 meet no query (items with zero steps: dK / dV 0, the
    # next item's K / V prefetched after the walk), between one-step items; 6 items on 4 CTAs
    "zero_step_items": _dkvcase(4, shape=(2, 128, 384, 2, 1, 64), causal=True,
                                unseen_keys_from=128),
    # the same with the consumers' ping-pong (HopperConfig.bwd_schedule_barrier): its extra
    # rounds per item (consumer 1 before its walk, consumer 0 after) around zero-step items
    "zero_step_items_ping_pong": _dkvcase(4, shape=(2, 128, 384, 2, 1, 64), causal=True,
                                          unseen_keys_from=128, bwd_sched=True),
}


# The persistent fused backward (HopperConfig(fused_persistent=True, persistent_ctas=n)): the
# same items through the fused kernel - one K / V buffer per consumer reloaded after each
# item's final meeting, dK / dV staged through the dS^T tiles, the pair barriers counting ring
# steps across items (3-slot ring: items start mid-ring, so parities cross items) - plus a
# D = 128 case (both consumers compute dQ columns). Race detector on.
PERSISTENT_FUSED_CASES = {
    name: dict(c, dkv_persistent=False, fused_persistent=True, grad="fused")
    for name, c in PERSISTENT_DKV_CASES.items() if not c.get("bwd_sched")}
PERSISTENT_FUSED_CASES["dense_d128"] = _case(
    fused_persistent=True, persistent_ctas=3, races=True, grad="fused", dtype="bfloat16",
    shape=(1, 256, 512, 2, 2, 128), block_kv=128)


def _check_persistent_case(name, case):
  """Runs a persistent-backward case (more items than CTAs, not a multiple of them) and checks
  it against the dense reference, race-free; zero-step items give exactly zero dK / dV."""
  B, _, S, _, K, _ = case["shape"]
  items = B * K * -(-S // 128)
  assert items > case["persistent_ctas"] and items % case["persistent_ctas"], "uneven split"
  res = _run_case(case)
  assert res["races_bwd"] == 0.0, res
  for key, err in res.items():
    if not key.startswith("n_"):
      assert err <= 3e-2, (name, key, err, res)
  if name.startswith("zero_step_items"):   # the keys no query sees get exactly zero gradients
    assert res["dkv_unseen"] == 0.0, res


@requires_interpret
@pytest.mark.parametrize("name,dynamic", [(n, True) for n in sorted(PERSISTENT_FUSED_CASES)]
                         + [("causal_gqa_window_ragged", False)])
def test_interpret_persistent_fused(name, dynamic):
  # every case with the dynamic scheduler (the default's), one with the static split (the
  # item loop is shared with the persistent dK/dV kernel, whose cases run both)
  _check_persistent_case(name, dict(PERSISTENT_FUSED_CASES[name], dynamic=dynamic))


@requires_interpret
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", sorted(PERSISTENT_DKV_CASES))
def test_interpret_persistent_dkv(name, dynamic):
  case = dict(PERSISTENT_DKV_CASES[name], dynamic=dynamic)
  D = case["shape"][-1]
  sides = 1 if "seg" in case else 0   # segment ids: one query and one key side array
  cfg = ha.HopperConfig(dkv_persistent=True, persistent_dynamic=dynamic,
                        bwd_stages=case.get("bwd_stages", 2),
                        bwd_schedule_barrier=case.get("bwd_sched", False))
  assert ha._dkv_persistent(cfg, D, 2, sides, sides), "the case would run non-persistent"
  _check_persistent_case(name, case)


def test_dkv_persistent_config():
  """Shared memory of the persistent dK/dV kernel (`_dkv_smem_bytes`, exact: see
  tests/test_kernel_lowering.py) and when it applies (`_dkv_persistent`)."""
  import dataclasses
  assert not ha.HopperConfig().dkv_persistent   # off by default
  cfg = ha.HopperConfig(dkv_persistent=True)
  dyn = dataclasses.replace(cfg, persistent_dynamic=True)
  # D=128, 2 stages: K / V double-buffered (+4 tiles of 64 x 128 x 2 bytes)
  assert ha._dkv_smem_bytes(cfg, 128, 2, persistent=True) == 198704
  assert ha._dkv_smem_bytes(cfg, 128, 2, persistent=False) == 198704 - 4 * 64 * 128 * 2
  assert ha._dkv_smem_bytes(dyn, 128, 2, persistent=True) == 198704 + 1024 + 32
  for c in (cfg, dyn):
    assert ha._dkv_persistent(c, 128, 2) and ha._dkv_persistent(c, 128, 2, 1, 2)
    assert ha._dkv_persistent(dataclasses.replace(c, bwd_stages=3), 64, 2, 1, 2)
  # 3 stages at D=128: plain with the static split only
  assert ha._dkv_persistent(dataclasses.replace(cfg, bwd_stages=3), 128, 2)
  assert not ha._dkv_persistent(dataclasses.replace(cfg, bwd_stages=3), 128, 2, 1, 1)
  assert not ha._dkv_persistent(dataclasses.replace(dyn, bwd_stages=3), 128, 2)
  # the other kernels' switches do not turn it on
  assert not ha._dkv_persistent(ha.HopperConfig(persistent=True, bwd_persistent=True), 64, 2)
  # the item order: the non-persistent grid's axes in Python order (KV heads fastest, then KV
  # tiles, then batch; tiles first with tiles_fastest), causal calls included
  import jax.numpy as jnp
  st = dataclasses.replace(_st(384, 384, True, 0, 0, None, None), B=2, K=3)
  got = [tuple(int(x) for x in ha._dkv_work_item(st, jnp.int32(w), 3)) for w in range(18)]
  assert got == [(b, h, ci) for b in range(2) for ci in range(3) for h in range(3)]
  st = dataclasses.replace(st, cfg=ha.HopperConfig(tiles_fastest=True))
  got = [tuple(int(x) for x in ha._dkv_work_item(st, jnp.int32(w), 3)) for w in range(18)]
  assert got == [(b, h, ci) for b in range(2) for h in range(3) for ci in range(3)]


def test_persistent_config():
  with pytest.raises(ValueError, match="persistent_ctas"):
    ha.HopperConfig(persistent=True, persistent_ctas=0)
  with pytest.raises(ValueError, match="persistent_ctas"):
    ha.HopperConfig(persistent=True, persistent_ctas=2.5)
  assert not ha.HopperConfig().persistent   # off by default
  cfg = ha.HopperConfig(persistent=True, persistent_ctas=3)
  assert ha._persistent_ctas(cfg, 10) == 3 and ha._persistent_ctas(cfg, 2) == 2
  assert ha._persistent_ctas(ha.HopperConfig(persistent=True), 10_000) >= 1
  import dataclasses
  for d in (64, 128, 256):
    base = ha.default_config(d)
    pcfg = dataclasses.replace(base, persistent=True)
    # what the kernel allocates fits, for plain, segment-id and side-array calls
    for kw in (dict(), dict(segments=True), dict(q_sides=1, kv_sides=2)):
      assert ha._fwd_smem_bytes(pcfg, d, 2, **kw) <= ha._SMEM_LIMIT, (d, kw)
    # the second Q buffer (and its row side values) is accounted for
    extra = ha._fwd_smem_bytes(pcfg, d, 2, segments=True, persistent=True) - ha._fwd_smem_bytes(
        base, d, 2, segments=True)
    assert extra == 2 * 64 * d * 2 + 2 * 64 * 4, (d, extra)
    # D <= 128 runs persistent; the default D=256 config does not fit twice the Q and falls
    # back to the non-persistent kernel (a 1-stage ring would fit)
    assert ha._fwd_persistent(pcfg, d, 2) == (d <= 128), d
    assert not ha._fwd_persistent(base, d, 2)
  assert ha._fwd_smem_bytes(dataclasses.replace(ha.default_config(256), persistent=True), 256, 2,
                            persistent=True) > ha._SMEM_LIMIT
  assert ha._fwd_persistent(ha.HopperConfig(block_kv=64, stages=1, persistent=True), 256, 2)
  # the work-item order: the non-persistent grid's axes in Python order (heads fastest, then
  # tiles, then batch; not the hardware's launch order, see `_grid`; causal: tiles reversed);
  # tiles first with tiles_fastest
  import jax.numpy as jnp
  st = _st(384, 384, False, 0, 0, None, None)
  st = dataclasses.replace(st, B=2, N=3)
  got = [tuple(int(x) for x in ha._fwd_work_item(st, jnp.int32(w), 3)) for w in range(18)]
  assert got == [(b, h, ci) for b in range(2) for ci in range(3) for h in range(3)]
  stc = dataclasses.replace(st, causal=True, cfg=ha.HopperConfig(tiles_fastest=True))
  got = [tuple(int(x) for x in ha._fwd_work_item(stc, jnp.int32(w), 3)) for w in range(18)]
  assert got == [(b, h, 2 - ci) for b in range(2) for h in range(3) for ci in range(3)]


def test_bwd_persistent_config():
  """Shared memory of the persistent dQ kernel (`_dq_smem_bytes`, exact: see
  tests/test_kernel_lowering.py) and when it applies (`_dq_persistent`)."""
  import dataclasses
  assert not ha.HopperConfig().bwd_persistent   # off by default
  cfg = ha.HopperConfig(bwd_persistent=True)
  limit = ha._SMEM_LIMIT
  # D=128, bwd_stages=2: Q and dO double-buffered (+2 tiles each, 4 * 64 * 128 * 2 bytes), O /
  # lse / dlse / side values single, delta staged in the lse slot, no reduction scratch
  assert ha._dq_smem_bytes(cfg, 128, 2, persistent=True) == 230448 <= limit
  assert ha._dq_smem_bytes(cfg, 128, 2, segments=True, persistent=True) == 231472 <= limit
  assert ha._dq_smem_bytes(cfg, 128, 2, persistent=False) == 169008
  assert ha._dq_persistent(cfg, 128, 2) and ha._dq_persistent(cfg, 128, 2, 1, 1)
  assert ha._dq_persistent(cfg, 128, 2, 1, 0) and ha._dq_persistent(cfg, 128, 2, 0, 2)
  # too big at D=128: one q + two kv side arrays, or a 3-slot ring -> non-persistent dQ
  assert not ha._dq_persistent(cfg, 128, 2, 1, 2)
  assert not ha._dq_persistent(dataclasses.replace(cfg, bwd_stages=3), 128, 2)
  # D=64 (and the padded 96 -> 128 as 128): everything fits, 3 slots and side arrays too
  for c in (cfg, dataclasses.replace(cfg, bwd_stages=3)):
    for sides in ((0, 0), (1, 1), (2, 3)):
      assert ha._dq_persistent(c, 64, 2, *sides), (c.bwd_stages, sides)
  assert not ha._dq_persistent(ha.HopperConfig(), 64, 2)
  # the forward's switch does not turn on the persistent dQ kernel, nor the reverse
  assert not ha._dq_persistent(ha.HopperConfig(persistent=True), 64, 2)
  assert not ha._fwd_persistent(cfg, 64, 2)
  # D > 128: no Mosaic backward at all (the XLA one), whatever the config
  assert not ha.bwd_kernel_supports(192)


# --------------------------------------------------------------------------------------------
# The backend: registration and capability refusals (no kernel runs).
# --------------------------------------------------------------------------------------------
def test_backend_spec_and_refusals():
  import jax.numpy as jnp
  import jattn
  from jattn._call import validate
  from jattn.backends import pallas_mgpu
  pallas_mgpu.register_backends()
  b = jattn.get("pallas_mgpu")
  assert b.spec.platforms == frozenset({"gpu"})
  q = jnp.zeros((1, 128, 4, 64), jnp.bfloat16)
  kv = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
  base = dict(bias=None, mask=None, scale=None, is_causal=True, score_mod=None,
              segment_ids=None, q_offset=0, kv_offset=0, sliding_window=(64, 0), softcap=None,
              sinks=None, dropout_rate=0.0, dropout_rng=None, return_lse=True)
  call = validate(q, kv, kv, **base)
  assert b.spec.refusal(call, b.name) is None  # causal + window + GQA + lse on cpu (interpret)
  # documents (segment ids) are honoured, with and without causal, and preferred over
  # pallas_flash (20) and cuDNN's dense-mask path (5) when the Mosaic backward applies
  seg_call = validate(q, kv, kv, **{**base, "sliding_window": None,
                                    "segment_ids": jnp.zeros((1, 128), jnp.int32)})
  assert b.spec.refusal(seg_call, b.name) is None
  assert b.spec.priority_for(seg_call) > jattn.get("pallas_flash").spec.priority_for(seg_call)
  q256, kv256 = jnp.zeros((1, 128, 4, 256), jnp.bfloat16), jnp.zeros((1, 128, 2, 256), jnp.bfloat16)
  seg256 = validate(q256, kv256, kv256, **{**base, "sliding_window": None,
                                           "segment_ids": jnp.zeros((1, 128), jnp.int32)})
  assert b.spec.priority_for(seg256) < jattn.get("pallas_flash").spec.priority_for(seg256)
  from jattn import masks
  # mask functions / BlockMasks are walked as block lists (tests/test_mask_ops.py has the
  # refusals of masks the kernel cannot evaluate)
  for mask in (masks.chunked_causal(32), masks.create_block_mask(
      masks.prefix_lm(8), None, None, 128, 128, block_size=64)):
    assert b.spec.refusal(validate(q, kv, kv, **{**base, "sliding_window": None,
                                                 "mask": mask}), b.name) is None
    # with the call's two-sided window folded in (ge, broadcast_in_dim: GPU-verified since the
    # sixth session)
    assert b.spec.refusal(validate(q, kv, kv, **{**base, "sliding_window": (64, 8),
                                                 "mask": mask}), b.name) is None
  table = jnp.arange(128)
  for extra, feature in ((dict(softcap=5.0), "softcap"),
                         (dict(mask=lambda b_, h, i, j: table[i] > j), "this call"),
                         (dict(score_mod=lambda s, b, h, i, j: s), "score_mod"),
                         (dict(mask=jnp.ones((1, 1, 128, 128), bool)), "mask"),
                         (dict(q_offset=jnp.int32(3)), "this call")):
    r = b.spec.refusal(validate(q, kv, kv, **{**base, **extra}), b.name)
    assert r is not None and r[0] == feature, (extra, r)
  r = b.spec.refusal(validate(q.astype(jnp.float32), kv.astype(jnp.float32),
                              kv.astype(jnp.float32), **base), b.name)
  assert r is not None and r[0] == "dtype"
  # never auto-selected on CPU (interpret only)
  assert jattn.explain(q, kv, kv, is_causal=True).chosen != "pallas_mgpu"


def test_rescale_threshold_is_checked_and_set_where_the_overlap_is():
  for bad in (-1, 11, True, 2.5):
    with pytest.raises(ValueError, match="rescale_threshold must be an int in"):
      ha.HopperConfig(rescale_threshold=bad)
  # every default that overlaps the softmax takes FA4's lazy rescale; the plain loop has none
  for cfg in (ha.default_config(128, 4096, static_ranges=True),
              ha.default_config(128, 1024, uniform_tiles=True),
              ha.default_config(64, 1024, static_ranges=True),
              ha.default_config(128, 8192, short_walks="band")):
    assert cfg.overlap_softmax and cfg.rescale_threshold == 8, cfg
  for cfg in (ha.default_config(128), ha.default_config(128, 8192, short_walks="data"),
              ha.default_config(256, 4096, static_ranges=True)):
    assert not cfg.overlap_softmax and cfg.rescale_threshold == 0, cfg
  # the row max on demand: the long (non-persistent) overlapped calls only
  assert ha.default_config(128, 4096, static_ranges=True).max_on_demand
  assert ha.default_config(64, 2048, uniform_tiles=True).max_on_demand
  for cfg in (ha.default_config(128, 1024, uniform_tiles=True),
              ha.default_config(128, 1024, static_ranges=True),
              ha.default_config(128, 8192, short_walks="band")):
    assert cfg.persistent and not cfg.max_on_demand, cfg
  with pytest.raises(ValueError, match="max_on_demand needs rescale_threshold"):
    ha.HopperConfig(max_on_demand=True, overlap_softmax=True)
  # the plain loop has no lazy rescale: refused rather than ignored
  with pytest.raises(ValueError, match="rescale_threshold needs overlap_softmax"):
    ha.HopperConfig(rescale_threshold=8)
