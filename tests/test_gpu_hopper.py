"""Compiled tests of the Hopper (Mosaic GPU) attention kernel and the `pallas_mgpu` backend.

Run on the H100 machine: `python3 -m pytest -m gpu tests/test_gpu_hopper.py`.
Random inputs; before every kernel call the device memory the outputs will land in is
poisoned with NaNs (allocated, filled and freed, so the allocator hands the same memory to
the outputs); every output must then be finite where the float32 reference is, and match it.
Forward (out, lse) and gradients (dq, dk, dv, including through lse) across the grid of
features: bf16/f16, head dims 64/96/128/256, causal with offsets, empty rows, sliding windows,
GQA, lengths that are not tile multiples, segment ids (documents: sorted, unsorted, traced, with
fully masked rows), the Mosaic backward and the XLA fallback backward.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from pallas_kernels import hopper_attention as ha
from pallas_kernels.hopper_reference import hopper_attention_reference as ref
from gpu_util import poison, rel_err

pytestmark = pytest.mark.gpu


def _hopper():
  try:
    devs = [d for d in jax.devices() if d.platform == "gpu"]
  except RuntimeError:
    return False
  return bool(devs) and str(getattr(devs[0], "compute_capability", "")).startswith("9.")


requires_hopper = pytest.mark.skipif(not _hopper(), reason="needs a Hopper (sm_90) GPU")


def _inputs(B, T, S, N, K, D, dtype, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(ks[0], (B, T, N, D), dtype)
  k = jax.random.normal(ks[1], (B, S, K, D), dtype)
  v = jax.random.normal(ks[2], (B, S, K, D), dtype)
  do = jax.random.normal(ks[3], (B, T, N, D), jnp.float32)
  dl = jax.random.normal(ks[4], (B, N, T), jnp.float32)
  return q, k, v, do, dl


def _tol(dtype):
  return 2e-2 if jnp.dtype(dtype) == jnp.bfloat16 else 1e-2


def check_forward(B, T, S, N, K, D, dtype, **kw):
  q, k, v, _, _ = _inputs(B, T, S, N, K, D, dtype)
  f = jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, return_lse=True, **kw))
  poison(((B, T, N, D), dtype), ((B, N, T), jnp.float32))
  o, l = f(q, k, v)
  o2, l2 = ref(q, k, v, return_lse=True, **kw)
  assert o.dtype == q.dtype and l.dtype == jnp.float32
  assert rel_err(o, o2) < _tol(dtype)
  assert rel_err(l, l2) < 1e-3
  # rows with no kept key: zeros and -inf
  empty = ~np.isfinite(np.asarray(l2))
  if empty.any():
    assert np.all(np.asarray(o, np.float32).transpose(0, 2, 1, 3)[empty] == 0)


def check_backward(B, T, S, N, K, D, dtype, **kw):
  q, k, v, do, dl = _inputs(B, T, S, N, K, D, dtype, seed=1)

  def loss(fn, q, k, v):
    o, l = fn(q, k, v, return_lse=True, **kw)
    return (jnp.sum(o.astype(jnp.float32) * do)
            + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0) * dl))

  g = jax.jit(jax.grad(lambda *a: loss(ha.hopper_attention, *a), argnums=(0, 1, 2)))
  g2 = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))  # ignores kernel options
  poison(((B, T, N, D), dtype), ((B, S, K, D), dtype), ((B, S, K, D), dtype))
  got = g(q, k, v)
  want = g2(q, k, v)
  tol = 2.5 * _tol(dtype)
  for name, a, b in zip(("dq", "dk", "dv"), got, want):
    assert a.dtype == q.dtype, name
    err = rel_err(a, b)
    assert err < tol, (name, err)


def check_forward_case(c, config):
  """check_forward of a case dict (shape, kw, optional dtype / config overriding `config`)."""
  check_forward(*c["shape"], c.get("dtype", jnp.bfloat16), config=c.get("config", config),
                **c["kw"])


def check_block_mask_lists(config, mask_fn, seed):
  """hopper_attention with BlockSparsity lists (a 200-key prefix + causal, 128 x 128 blocks)
  and `mask_fn` for that mask, forward + lse against the dense reference."""
  from pallas_kernels import from_dense
  q, k, v, _, _ = _inputs(2, 640, 640, 8, 2, 128, jnp.bfloat16, seed=seed)
  dense = np.tril(np.ones((640, 640), bool)) | (np.arange(640)[None, :] < 200)
  bs = from_dense(dense[None, None], 128, 128)
  f = jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, return_lse=True, config=config,
                                                  block_sparsity=bs, mask_fn=mask_fn))
  poison(((2, 640, 8, 128), jnp.bfloat16), ((2, 8, 640), jnp.float32))
  o, l = f(q, k, v)
  o2, l2 = ref(q, k, v, return_lse=True, mask=jnp.asarray(dense))
  assert rel_err(o, o2) < 2e-2 and rel_err(l, l2) < 1e-3



# --------------------------------------------------------------------------------------------
# Forward.
# --------------------------------------------------------------------------------------------
@requires_hopper
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_grid(dtype, D, causal):
  check_forward(2, 512, 512, 4, 4, D, dtype, is_causal=causal)


FWD_FEATURES = {
    "gqa_causal": dict(shape=(2, 384, 384, 8, 2, 128), kw=dict(is_causal=True)),
    "chunked_prefill_offset": dict(shape=(1, 256, 640, 4, 2, 128),
                                   kw=dict(is_causal=True, q_offset=384)),
    "empty_rows_kv_offset": dict(shape=(1, 256, 256, 2, 2, 64),
                                 kw=dict(is_causal=True, kv_offset=100)),
    "window_two_sided": dict(shape=(1, 512, 512, 2, 2, 128),
                             kw=dict(sliding_window=(100, 30))),
    "window_causal": dict(shape=(2, 640, 640, 4, 2, 128),
                          kw=dict(is_causal=True, sliding_window=(200, 0))),
    "not_multiples": dict(shape=(2, 333, 517, 4, 2, 128),
                          kw=dict(is_causal=True, q_offset=184)),
    "head_dim_96_padded": dict(shape=(1, 300, 300, 2, 1, 96), kw=dict(is_causal=True)),
    "head_dim_256_window": dict(shape=(1, 384, 512, 2, 1, 256),
                                kw=dict(sliding_window=(64, None), kv_offset=7)),
    "f16_decode_like": dict(shape=(4, 1, 700, 8, 1, 128), kw=dict(is_causal=True, q_offset=699),
                            dtype=jnp.float16),
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(FWD_FEATURES))
def test_forward_features(name):
  c = FWD_FEATURES[name]
  check_forward_case(c, None)


@requires_hopper
@pytest.mark.parametrize("cfg", [ha.HopperConfig(block_kv=64, stages=3),
                                 ha.HopperConfig(block_kv=128, stages=3,
                                                 reduction_scratch_bytes=512),
                                 ha.HopperConfig(block_kv=128, stages=2, schedule_barrier=False),
                                 ha.HopperConfig(bwd_stages=3)])
def test_configs(cfg):
  check_forward(1, 640, 640, 2, 2, 128, jnp.bfloat16, is_causal=True, config=cfg)
  check_backward(1, 384, 384, 2, 2, 128, jnp.bfloat16, is_causal=True, config=cfg)


# --------------------------------------------------------------------------------------------
# Backward.
# --------------------------------------------------------------------------------------------
@requires_hopper
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_grid(dtype, D, causal):
  check_backward(2, 512, 512, 4, 4, D, dtype, is_causal=causal, backward="mosaic")


@requires_hopper
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_fused(D, causal):
  # GQA: the head loop carries the previous step's block into the next head's first step
  check_backward(2, 512, 512, 4, 2, D, jnp.bfloat16, is_causal=causal, backward="fused")


@requires_hopper
def test_backward_fused_features():
  check_backward(2, 333, 517, 8, 2, 128, jnp.float16, is_causal=True, q_offset=184,
                 sliding_window=(150, None), backward="fused")
  check_backward(1, 256, 256, 2, 2, 64, jnp.bfloat16, is_causal=True, kv_offset=100,
                 backward="fused")


BWD_FEATURES = {
    "gqa_offsets_window_not_multiples": dict(
        shape=(2, 333, 517, 8, 2, 128),
        kw=dict(is_causal=True, q_offset=184, sliding_window=(150, None))),
    "empty_rows": dict(shape=(1, 256, 256, 2, 2, 64), kw=dict(is_causal=True, kv_offset=100)),
    "window_two_sided_gqa": dict(shape=(1, 512, 512, 4, 1, 64),
                                 kw=dict(sliding_window=(100, 30))),
    "head_dim_96": dict(shape=(1, 300, 300, 2, 2, 96), kw=dict(is_causal=True)),
    "head_dim_256_xla_fallback": dict(shape=(1, 256, 256, 2, 1, 256),
                                      kw=dict(is_causal=True, backward="xla")),
    "xla_fallback_d128": dict(shape=(1, 256, 384, 4, 2, 128),
                              kw=dict(is_causal=True, q_offset=128, backward="xla")),
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(BWD_FEATURES))
def test_backward_features(name):
  c = BWD_FEATURES[name]
  check_backward(*c["shape"], c.get("dtype", jnp.bfloat16), **c["kw"])


# --------------------------------------------------------------------------------------------
# Segment ids (documents / packed sequences): per-tile block ranges read as scalars in-kernel,
# per-block id vectors through TMA, equality mask on partial blocks only.
# --------------------------------------------------------------------------------------------
def _docs(B, L, n_docs, seed=0, orphan=None):
  """[B, L] int32 sorted document ids, cuts at random (non-block-multiple) positions, different
  per batch row; `orphan=(lo, hi)`: those rows get an id no key has (fully masked rows)."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((B, L), np.int32)
  for b in range(B):
    for x in rng.choice(np.arange(1, L), n_docs - 1, replace=False):
      ids[b, x:] += 1
  if orphan:
    ids[:, orphan[0]:orphan[1]] = 99
  return jnp.asarray(ids)


def _seg(T, S, n_docs, seed=0, orphan=None, B=2):
  ids = _docs(B, max(T, S), n_docs, seed)
  q_ids = ids[:, :T]
  if orphan:
    q_ids = q_ids.at[:, orphan[0]:orphan[1]].set(99)
  return (q_ids, ids[:, :S])


SEG_CASES = {
    "docs_causal_gqa": dict(shape=(2, 1000, 1000, 8, 2, 128),
                            kw=dict(is_causal=True, segment_ids=_seg(1000, 1000, 5))),
    "docs_not_causal_d64": dict(shape=(2, 777, 777, 4, 4, 64),
                                kw=dict(segment_ids=_seg(777, 777, 4, seed=1))),
    "docs_empty_rows_f16": dict(shape=(2, 640, 640, 4, 2, 128), dtype=jnp.float16,
                                kw=dict(is_causal=True,
                                        segment_ids=_seg(640, 640, 3, seed=2, orphan=(100, 230)))),
    "docs_cross_lengths_offset": dict(shape=(2, 333, 517, 4, 2, 128),
                                      kw=dict(is_causal=True, q_offset=184,
                                              segment_ids=_seg(333, 517, 3, seed=3))),
    "docs_window": dict(shape=(2, 900, 900, 4, 2, 128),
                        kw=dict(is_causal=True, sliding_window=(200, 0),
                                segment_ids=_seg(900, 900, 3, seed=4))),
    "unsorted_ids": dict(shape=(1, 384, 384, 2, 2, 64),
                         kw=dict(segment_ids=(jnp.asarray(np.random.default_rng(5).integers(
                             0, 3, (1, 384)), jnp.int32),) * 2)),
    "docs_single_array_head_dim_96": dict(shape=(2, 300, 300, 2, 1, 96),
                                          kw=dict(is_causal=True,
                                                  segment_ids=_docs(2, 300, 3, seed=6))),
    "docs_block_kv64_3stages": dict(shape=(2, 640, 640, 4, 2, 128),
                                    kw=dict(is_causal=True, segment_ids=_seg(640, 640, 4, seed=7),
                                            config=ha.HopperConfig(block_kv=64, stages=3,
                                                                   bwd_stages=3))),
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(SEG_CASES))
def test_segments_forward(name):
  c = SEG_CASES[name]
  check_forward_case(c, None)


@requires_hopper
@pytest.mark.parametrize("backward", ["fused", "mosaic"])
@pytest.mark.parametrize("name", sorted(SEG_CASES))
def test_segments_backward(name, backward):
  """Both Mosaic backwards with segment ids: the fused one (the default) and the two-kernel
  one (the dQ kernel's range table, the dK/dV kernel's)."""
  c = SEG_CASES[name]
  cfg = c["kw"].get("config") or ha.HopperConfig()
  if backward == "fused" and not ha._fused_fits(cfg, c["shape"][-1], True):  # pylint: disable=protected-access
    # bwd_stages=3 at D=128: the fused kernel would need 233552 bytes of shared memory; refused
    # by name at trace time (the default takes the two-kernel backward there)
    with pytest.raises(ValueError, match="backward='fused'.*shared memory"):
      check_backward(*c["shape"], c.get("dtype", jnp.bfloat16), backward=backward, **c["kw"])
    return
  check_backward(*c["shape"], c.get("dtype", jnp.bfloat16), backward=backward, **c["kw"])


@requires_hopper
def test_segments_head_dim_256_xla_backward():
  kw = dict(is_causal=True, segment_ids=_seg(384, 384, 3, seed=8, B=1))
  check_forward(1, 384, 384, 2, 1, 256, jnp.bfloat16, **kw)
  check_backward(1, 384, 384, 2, 1, 256, jnp.bfloat16, backward="xla", **kw)


@requires_hopper
def test_segments_traced_ids():
  """Ids as jit arguments (traced): the range tables are computed on the device."""
  B, T, N, K, D = 2, 768, 4, 2, 128
  q, k, v, do, _ = _inputs(B, T, T, N, K, D, jnp.bfloat16)
  ids = _docs(B, T, 6, seed=9)
  f = jax.jit(lambda q, k, v, ids: ha.hopper_attention(q, k, v, is_causal=True,
                                                        segment_ids=ids, return_lse=True))
  poison(((B, T, N, D), jnp.bfloat16), ((B, N, T), jnp.float32))
  o, l = f(q, k, v, ids)
  o2, l2 = ref(q, k, v, is_causal=True, segment_ids=ids, return_lse=True)
  assert rel_err(o, o2) < 2e-2 and rel_err(l, l2) < 1e-3
  g = jax.jit(jax.grad(lambda q, k, v, ids: jnp.sum(ha.hopper_attention(
      q, k, v, is_causal=True, segment_ids=ids).astype(jnp.float32) * do), argnums=(0, 1, 2)))
  g2 = jax.grad(lambda q, k, v: jnp.sum(ref(q, k, v, is_causal=True, segment_ids=ids)
                                        .astype(jnp.float32) * do), argnums=(0, 1, 2))
  for name, a, b in zip(("dq", "dk", "dv"), g(q, k, v, ids), g2(q, k, v)):
    assert rel_err(a, b) < 5e-2, name


@requires_hopper
def test_documents_through_jattn():
  """segment_ids through jattn: auto-selected on Hopper, matches the reference backend."""
  import jattn
  from jattn.backends import pallas_mgpu
  pallas_mgpu.register_backends()
  q, k, v, do, _ = _inputs(2, 1024, 1024, 8, 2, 128, jnp.bfloat16)
  kw = dict(is_causal=True, segment_ids=_docs(2, 1024, 8, seed=10))
  assert jattn.explain(q, k, v, **kw).chosen == "pallas_mgpu"
  out = jattn.attention(q, k, v, **kw)
  want = jattn.attention(q, k, v, implementation="reference", **kw)
  assert rel_err(out, want) < 2e-2
  g = jax.grad(lambda q: jnp.sum(jattn.attention(q, k, v, **kw).astype(jnp.float32) * do))(q)
  g2 = jax.grad(lambda q: jnp.sum(jattn.attention(q, k, v, implementation="reference", **kw)
                                  .astype(jnp.float32) * do))(q)
  assert rel_err(g, g2) < 5e-2


# --------------------------------------------------------------------------------------------
# Persistent forward (HopperConfig(persistent=True)): one CTA per SM (default count), each
# looping over (head, q tile, batch) work items; K/V ring, ping-pong and producer carried
# across tiles, Q double-buffered, O / lse stores not awaited before the next tile.
# --------------------------------------------------------------------------------------------
_PERSISTENT = ha.HopperConfig(persistent=True)

PERSISTENT_FWD = {
    # 4 * 16 * 8 = 512 work items on the SMs (not a multiple of 132)
    "dense": dict(shape=(4, 1024, 1024, 16, 16, 128), kw=dict()),
    "causal": dict(shape=(4, 1024, 1024, 16, 16, 128), kw=dict(is_causal=True)),
    "causal_gqa_ragged_offset": dict(shape=(2, 333, 517, 8, 2, 128),
                                     kw=dict(is_causal=True, q_offset=184)),
    "window_causal_gqa": dict(shape=(2, 640, 640, 8, 2, 128),
                              kw=dict(is_causal=True, sliding_window=(200, 0))),
    "window_two_sided_ragged": dict(shape=(1, 700, 900, 4, 2, 128),
                                    kw=dict(sliding_window=(100, 30))),
    # whole query tiles with no key (n = 0 tiles between non-empty ones)
    "empty_tiles_kv_offset": dict(shape=(2, 512, 256, 4, 2, 128),
                                  kw=dict(is_causal=True, kv_offset=300)),
    "documents_empty_rows": dict(shape=(2, 1000, 1000, 8, 2, 128),
                                 kw=dict(is_causal=True,
                                         segment_ids=_seg(1000, 1000, 5, seed=11,
                                                          orphan=(100, 230)))),
    "documents_not_causal": dict(shape=(2, 777, 777, 4, 4, 128),
                                 kw=dict(segment_ids=_seg(777, 777, 4, seed=12))),
    # fewer work items (4) than SMs: the CTA count is capped
    "few_items": dict(shape=(1, 256, 256, 2, 2, 128), kw=dict(is_causal=True)),
    "d64_f16": dict(shape=(2, 512, 512, 8, 2, 64), kw=dict(is_causal=True), dtype=jnp.float16),
    # D=256: the second Q buffer does not fit with the default ring: runs non-persistent
    "d256_falls_back": dict(shape=(1, 384, 512, 2, 1, 256),
                            kw=dict(sliding_window=(64, None), kv_offset=7),
                            config=dataclasses.replace(ha.default_config(256), persistent=True)),
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(PERSISTENT_FWD))
def test_persistent_forward(name):
  check_forward_case(PERSISTENT_FWD[name], _PERSISTENT)


@requires_hopper
@pytest.mark.parametrize("cfg", [
    ha.HopperConfig(persistent=True, schedule_barrier=False),
    ha.HopperConfig(persistent=True, persistent_ctas=7),            # many items per CTA
    ha.HopperConfig(persistent=True, block_kv=64, stages=3),
    ha.HopperConfig(persistent=True, tiles_fastest=True),
    ha.HopperConfig(block_kv=64, stages=1, persistent=True),          # D=256 persistent
], ids=["no_sched", "ctas7", "bkv64_3stages", "tiles_fastest", "d256_1stage"])
def test_persistent_configs(cfg):
  D = 256 if cfg.stages == 1 else 128
  check_forward(2, 640, 700, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=60, config=cfg)
  check_forward(2, 640, 640, 4, 2, D, jnp.bfloat16, config=cfg,
                segment_ids=_seg(640, 640, 4, seed=13, orphan=(300, 420)))


@requires_hopper
def test_persistent_block_mask_and_backward():
  """A BlockMask (lists + mask_fn) through the persistent forward, and the backward of a
  persistent-config call (the backward kernels ignore `persistent`)."""
  check_block_mask_lists(_PERSISTENT, lambda b, h, i, j, qv, kvv: (j <= i) | (j < 200), 14)
  check_backward(2, 384, 384, 4, 2, 128, jnp.bfloat16, is_causal=True, config=_PERSISTENT)


# The persistent forward with the dynamic scheduler (HopperConfig(persistent_dynamic=True)):
# each CTA's next work item from a global atomic counter, handed through shared memory.
_DYNAMIC = ha.HopperConfig(persistent=True, persistent_dynamic=True)


@requires_hopper
@pytest.mark.parametrize("name", sorted(PERSISTENT_FWD))
def test_persistent_dynamic_forward(name):
  check_forward_case(PERSISTENT_FWD[name], _DYNAMIC)


@requires_hopper
@pytest.mark.parametrize("cfg", [
    dataclasses.replace(_DYNAMIC, persistent_ctas=7),             # many items per CTA
    dataclasses.replace(_DYNAMIC, overlap_softmax=True, schedule_barrier=False,
                        consumer_registers=240, producer_registers=24),
    dataclasses.replace(_DYNAMIC, persistent_sync_per_tile=False),
], ids=["ctas7", "overlap_24regs", "sync_once"])
def test_persistent_dynamic_configs(cfg):
  check_forward(2, 640, 700, 4, 2, 128, jnp.bfloat16, is_causal=True, q_offset=60, config=cfg)
  check_forward(2, 640, 640, 4, 2, 128, jnp.bfloat16, config=cfg,
                segment_ids=_seg(640, 640, 4, seed=13, orphan=(300, 420)))
  check_block_mask_lists(cfg, lambda b, h, i, j, qv, kvv: (j <= i) | (j < 200), 15)


@requires_hopper
def test_persistent_dynamic_repeated_calls():
  """The counter is zero again after a launch (the same jitted call twice gives the same
  result, the static split's); the backward of a dynamic-config call too. Under vmap:
  test_vmap_of_kernels_with_a_ref."""
  q, k, v, do, _ = _inputs(3, 512, 512, 4, 2, 128, jnp.bfloat16)
  seg = _seg(512, 512, 3, seed=16, B=3)
  static = ha.HopperConfig(persistent=True)
  f = jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, segment_ids=seg, config=_DYNAMIC))
  a, b = f(q, k, v), f(q, k, v)
  assert bool(jnp.array_equal(a, b))
  # the same per-tile code as the static split: only which CTA runs a tile differs
  want = ha.hopper_attention(q, k, v, segment_ids=seg, config=static)
  assert rel_err(a, want) < 1e-6
  check_backward(2, 384, 384, 4, 2, 128, jnp.bfloat16, is_causal=True, config=_DYNAMIC)


# the dynamic scheduler in all three kernels (the persistent forward, dQ and dK/dV kernels)
_DYNAMIC_BOTH = ha.HopperConfig(persistent=True, bwd_persistent=True, dkv_persistent=True,
                                persistent_dynamic=True)

DYNAMIC_BWD = {
    "causal_gqa_ragged_offset": dict(shape=(2, 333, 517, 8, 2, 128),
                                     kw=dict(is_causal=True, q_offset=184)),
    "window_two_sided_ragged": dict(shape=(1, 700, 900, 4, 2, 128),
                                    kw=dict(sliding_window=(100, 30))),
    "documents_empty_rows": PERSISTENT_FWD["documents_empty_rows"],
    "d64_f16": PERSISTENT_FWD["d64_f16"],
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(DYNAMIC_BWD))
def test_persistent_dynamic_backward(name):
  """The dynamic scheduler in the persistent forward, dQ and dK/dV kernels: gradients (with an
  lse cotangent: the dQ kernel's item slots behind the dlse row) and, for documents, the
  gradient of a loss on the output alone (no lse cotangent: the persistent dQ kernel with
  segment ids)."""
  c = DYNAMIC_BWD[name]
  check_backward(*c["shape"], c.get("dtype", jnp.bfloat16), config=_DYNAMIC_BOTH, **c["kw"])
  if name == "documents_empty_rows":
    q, k, v, do, _ = _inputs(*c["shape"], jnp.bfloat16, seed=2)
    loss = lambda fn, **kw: lambda q, k, v: jnp.sum(
        fn(q, k, v, **c["kw"], **kw).astype(jnp.float32) * do)
    got = jax.jit(jax.grad(loss(ha.hopper_attention, config=_DYNAMIC_BOTH),
                           argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
      assert rel_err(a, b) < 5e-2


@requires_hopper
def test_persistent_dynamic_block_mask_backward():
  from pallas_kernels import from_dense
  q, k, v, do, _ = _inputs(2, 640, 640, 8, 2, 128, jnp.bfloat16, seed=18)
  dense = np.tril(np.ones((640, 640), bool)) | (np.arange(640)[None, :] < 200)
  bs = from_dense(dense[None, None], 128, 128)
  mask_fn = lambda b, h, i, j, qv, kvv: (j <= i) | (j < 200)
  loss = lambda fn, **kw: lambda q, k, v: jnp.sum(fn(q, k, v, **kw).astype(jnp.float32) * do)
  got = jax.jit(jax.grad(loss(ha.hopper_attention, config=_DYNAMIC_BOTH, block_sparsity=bs,
                              mask_fn=mask_fn), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref, mask=jnp.asarray(dense)), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    assert rel_err(a, b) < 5e-2


@requires_hopper
@pytest.mark.parametrize("what", [
    "dynamic_forward",
    "dynamic_backward",
    "fused_backward",
    "fused_backward_segments",
])
def test_vmap_of_kernels_with_a_ref(what):
  """The kernels launched with a Ref operand (the dynamic scheduler's counter, the fused
  backward's dQ sum) under vmap: the dynamic kernels once per element (`lax.map`), the fused
  backward with the mapped axis folded into the batch (`_batch_folded`)."""
  q, k, v, do, _ = _inputs(3, 512, 512, 4, 2, 128, jnp.bfloat16)
  if what == "dynamic_forward":
    kw = dict(is_causal=True, config=_DYNAMIC)
    f = lambda q, k, v: ha.hopper_attention(q[None], k[None], v[None], **kw)[0]
    got = jax.vmap(f)(q, k, v)
    want = ha.hopper_attention(q, k, v, is_causal=True, config=ha.HopperConfig(persistent=True))
    assert rel_err(got, want) < 1e-6
  elif what == "dynamic_backward":   # the dQ and dK/dV kernels' counters
    kw = dict(is_causal=True, config=_DYNAMIC_BOTH)
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q[None], k[None], v[None], **kw)[0]
                                              .astype(jnp.float32) * do[0])
    got = jax.vmap(jax.grad(loss(ha.hopper_attention), argnums=(0, 1, 2)))(q, k, v)
    want = jax.vmap(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(got, want):
      assert rel_err(a, b) < 5e-2
  elif what == "fused_backward":
    kw = dict(is_causal=True, backward="fused")
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q[None], k[None], v[None], **kw)[0]
                                              .astype(jnp.float32) * do[0])
    got = jax.vmap(jax.grad(loss(ha.hopper_attention)))(q, k, v)
    want = jax.vmap(jax.grad(loss(ref)))(q, k, v)
    assert rel_err(got, want) < 5e-2
  else:   # segment ids mapped with q (each element cut into documents elsewhere)
    ids = _docs(3, 512, 4, seed=30)[:, None]   # [3, 1, 512]
    loss = lambda fn, **extra: lambda q, k, v, ids: jnp.sum(
        fn(q[None], k[None], v[None], is_causal=True, segment_ids=ids, **extra)[0]
        .astype(jnp.float32) * do[0])
    got = jax.vmap(jax.grad(loss(ha.hopper_attention, backward="fused"), argnums=(0, 1, 2)))(
        q, k, v, ids)
    want = jax.vmap(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v, ids)
    for a, b in zip(got, want):
      assert rel_err(a, b) < 5e-2


@requires_hopper
@pytest.mark.parametrize("backward", ["fused", "mosaic"])
def test_backward_inside_scan(backward):
  """Gradients of a 2-layer `lax.scan` through the kernel (a model scanning its layers): the
  fused backward's dQ sum (a Ref the kernel reduce-adds into) inside an XLA loop; the
  dynamic scheduler's counter too (the mosaic case with the dynamic config)."""
  q, k, v, do, _ = _inputs(1, 1024, 1024, 4, 4, 128, jnp.bfloat16, seed=21)
  cfg = None if backward == "fused" else _DYNAMIC_BOTH

  def loss(fn, **kw):
    def f(q, k, v):
      def body(c, _):
        return fn(c, k, v, **kw).astype(c.dtype), None
      o, _ = lax.scan(body, q, None, length=2)
      return jnp.sum(o.astype(jnp.float32) * do)
    return f
  got = jax.jit(jax.grad(loss(ha.hopper_attention, backward=backward, config=cfg),
                         argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    assert rel_err(a, b) < 5e-2


# --------------------------------------------------------------------------------------------
# Forward with HopperConfig(overlap_softmax=True): S_t and P_{t-1} V_{t-1} issued together, the
# softmax of S_t overlapping the P V product (FA3's intra-warpgroup overlap), non-persistent and
# persistent.
# --------------------------------------------------------------------------------------------
_OVERLAP = ha.HopperConfig(overlap_softmax=True)
_OVERLAP_PERSISTENT = ha.HopperConfig(overlap_softmax=True, persistent=True)

OVERLAP_FWD = {
    "dense_bf16": dict(shape=(2, 512, 512, 4, 4, 128), kw=dict()),
    "causal_f16_d64": dict(shape=(2, 512, 512, 4, 4, 64), kw=dict(is_causal=True),
                           dtype=jnp.float16),
    **{k: FWD_FEATURES[k] for k in ("gqa_causal", "not_multiples", "window_two_sided",
                                    "empty_rows_kv_offset", "head_dim_96_padded",
                                    "f16_decode_like")},
    "documents_empty_rows": PERSISTENT_FWD["documents_empty_rows"],
    **{"persistent_" + k: dict(PERSISTENT_FWD[k], config=_OVERLAP_PERSISTENT)
       for k in ("dense", "causal_gqa_ragged_offset", "empty_tiles_kv_offset",
                 "documents_not_causal")},
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(OVERLAP_FWD))
def test_overlap_softmax_forward(name):
  check_forward_case(OVERLAP_FWD[name], _OVERLAP)


@requires_hopper
@pytest.mark.parametrize("cfg", [_OVERLAP, _OVERLAP_PERSISTENT], ids=["grid", "persistent"])
def test_overlap_softmax_block_mask(cfg):
  check_block_mask_lists(cfg, lambda b, h, i, j, qv, kvv: ~((j > i) & (j >= 200)), 17)


# HopperConfig.fwd_half_steps (twenty-fourth session): a consumer whose last block has a half
# that is all masked for its rows (a causal diagonal, a window's edge, padding keys) computes
# only the other half. On in every overlapped default (config=None below: the window cell's
# and short causal calls' persistent configs, a long causal call's), and named on a two-sided
# window with a kv offset at D = 64 (f16) and a ragged dense call; fwd+bwd of a long causal
# call and of the window.
_HALF = dict(fwd_half_steps=True)
HALF_STEPS_FWD = {
    "window_1023_default": dict(shape=(1, 2048, 2048, 4, 4, 128),
                                    kw=dict(sliding_window=(1023, 0))),
    "window_causal_gqa_default": dict(shape=(2, 1500, 1500, 8, 2, 128),
                                          kw=dict(is_causal=True, sliding_window=(255, None))),
    "causal_short_default_ragged_offset": dict(
        shape=(2, 900, 1000, 4, 2, 128), kw=dict(is_causal=True, q_offset=100)),
    "causal_long_default": dict(shape=(1, 2100, 2100, 4, 2, 128), kw=dict(is_causal=True)),
    "window_two_sided_offsets_d64_f16": dict(
        shape=(1, 700, 900, 4, 2, 64), kw=dict(sliding_window=(255, 63), kv_offset=7),
        dtype=jnp.float16, config=dataclasses.replace(_OVERLAP, **_HALF)),
    "dense_padding_half": dict(shape=(2, 300, 300, 4, 4, 128), kw=dict(),
                               config=dataclasses.replace(_OVERLAP, **_HALF)),
}


@requires_hopper
@pytest.mark.parametrize("name", sorted(HALF_STEPS_FWD))
def test_forward_half_steps(name):
  for cfg in (ha.default_config(128, 2048, short_walks="band"),
              ha.default_config(128, 1000, static_ranges=True)):
    assert cfg.fwd_half_steps   # what config=None picks for the window and short causal cases
  check_forward_case(HALF_STEPS_FWD[name], None)


@requires_hopper
def test_forward_half_steps_backward():
  assert ha.default_config(128, 2100, static_ranges=True).fwd_half_steps
  check_backward(1, 2100, 2100, 4, 2, 128, jnp.bfloat16, is_causal=True, q_offset=50)
  check_backward(1, 2048, 2048, 4, 4, 128, jnp.bfloat16, sliding_window=(1023, 0))


# The overlap with 240 registers per consumer and 24 for the producer (FA3's split): faster in
# 6 of 8 forward A/B comparisons (NOTES.md v7) but not yet a default; this runs every producer
# path with 24 registers (static ranges, the segment-id range table, block lists; persistent
# and not) and the backward kernels under the same split.
_R240 = dict(overlap_softmax=True, consumer_registers=240, producer_registers=24)


@requires_hopper
@pytest.mark.parametrize("name", ["not_multiples", "documents_empty_rows",
                                  "persistent_documents_not_causal",
                                  "persistent_empty_tiles_kv_offset"])
def test_overlap_registers_240_forward(name):
  c = OVERLAP_FWD[name]
  cfg = dataclasses.replace(c.get("config", _OVERLAP), **_R240)
  check_forward_case(dict(c, config=cfg), None)


@requires_hopper
def test_overlap_registers_240_block_mask_and_backward():
  cfg = ha.HopperConfig(**_R240)
  check_block_mask_lists(cfg, lambda b, h, i, j, qv, kvv: ~((j > i) & (j >= 200)), 18)
  check_block_mask_lists(dataclasses.replace(cfg, persistent=True),
                         lambda b, h, i, j, qv, kvv: (j <= i) | (j < 200), 19)
  check_backward(2, 333, 517, 4, 2, 128, jnp.bfloat16, is_causal=True, q_offset=184,
                 config=cfg)
  check_backward(2, 400, 400, 4, 2, 128, jnp.bfloat16, config=cfg,
                 segment_ids=_seg(400, 400, 3, seed=20, orphan=(100, 130)))


@requires_hopper
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("case", ["dense_8k", "causal_2k_gqa_ragged"])
def test_default_long_calls(case, D):
  """What a long call gets with no config / backward named (seventh session): the overlap
  with 240 / 24 registers and (fourteenth) a 512-byte reduction scratch, and the fused
  backward (`default_backward`)."""
  assert ha.default_backward(D) == "fused"
  assert ha.default_config(D, 2100, static_ranges=True).reduction_scratch_bytes == 512
  if case == "dense_8k":
    check_forward(1, 8192, 8192, 2, 1, D, jnp.bfloat16)
    check_backward(1, 8192, 8192, 2, 1, D, jnp.bfloat16)
  else:
    check_forward(2, 2000, 2100, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=100)
    check_backward(2, 2000, 2100, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=100)


@requires_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_default_short_causal_calls(D):
  """What a causal call of up to 1024 keys gets with no config / backward named (sixteenth
  session): the dynamic persistent forward and the two-kernel backward with the persistent
  dK/dV kernel (dynamic scheduler); GQA, ragged lengths, an offset. Naming the fused backward
  drops that switch from the default config."""
  cfg = ha.default_config(D, 1000, static_ranges=True)
  assert cfg.dkv_persistent and cfg.persistent_dynamic
  assert ha.default_backward(D, masked=True, config=cfg) == "mosaic"
  check_forward(4, 900, 1000, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=100)
  check_backward(4, 900, 1000, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=100)
  check_backward(2, 1024, 1024, 4, 4, D, jnp.float16, is_causal=True)
  check_backward(2, 1024, 1024, 4, 4, D, jnp.bfloat16, is_causal=True, backward="fused")


@requires_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_default_short_dense_calls(D):
  """Dense calls of up to 1024 keys and queries: by default the persistent fused backward
  (dynamic scheduler; seventeenth session): GQA, ragged lengths, T != S, f16; and the named
  two-kernel backward, which drops the switch."""
  cfg = ha.default_config(D, 1000, uniform_tiles=True)
  assert cfg.fused_persistent and ha.default_backward(D, config=cfg) == "fused"
  check_backward(4, 900, 1000, 4, 2, D, jnp.bfloat16)
  check_backward(2, 1024, 1024, 4, 4, D, jnp.float16)
  check_backward(3, 333, 517, 8, 2, D, jnp.bfloat16, backward="mosaic")


@requires_hopper
def test_bwd_schedule_barrier():
  """The backward kernels' ping-pong (HopperConfig(bwd_schedule_barrier=True): dQ and dK/dV;
  off by default: slower on the H100): GQA head loop + causal + offset + ragged, documents
  with empty rows, a two-sided window at D=64 f16, the persistent dQ kernel with zero-step
  tiles."""
  cfg = ha.HopperConfig(bwd_schedule_barrier=True)
  check_backward(2, 333, 517, 8, 2, 128, jnp.bfloat16, is_causal=True, q_offset=184,
                 config=cfg)
  check_backward(2, 400, 400, 4, 2, 128, jnp.bfloat16, config=cfg,
                 segment_ids=_seg(400, 400, 3, seed=21, orphan=(100, 130)))
  check_backward(1, 512, 512, 4, 1, 64, jnp.float16, sliding_window=(100, 30),
                 config=dataclasses.replace(cfg, block_kv=128, stages=3))
  check_backward(2, 512, 256, 4, 2, 128, jnp.bfloat16, is_causal=True, kv_offset=300,
                 config=dataclasses.replace(cfg, bwd_persistent=True))


# --------------------------------------------------------------------------------------------
# Persistent dQ kernel (HopperConfig(bwd_persistent=True)): one CTA per SM (default count),
# each looping over (head, q tile, batch) work items; K/V ring and producer carried across
# tiles, Q / dO double-buffered, the next tile's inputs loaded during the current one, delta /
# dQ stores not awaited before the next tile. The persistent dK/dV kernel: below.
# --------------------------------------------------------------------------------------------
_BWD_PERSISTENT = ha.HopperConfig(bwd_persistent=True)

PERSISTENT_BWD = {
    # 2 * 8 * 8 = 128 work items (< 132 SMs: one each) / 4 * 16 * 8 = 512 (not a multiple)
    "dense": dict(shape=(2, 1024, 1024, 8, 8, 128), kw=dict()),
    "causal_many_items": dict(shape=(4, 1024, 1024, 16, 4, 128), kw=dict(is_causal=True)),
    "gqa_offsets_window_not_multiples": dict(
        shape=(2, 333, 517, 8, 2, 128),
        kw=dict(is_causal=True, q_offset=184, sliding_window=(150, None))),
    # whole query tiles with no key (zero-step tiles: dQ 0, delta still written)
    "empty_tiles_kv_offset": dict(shape=(2, 512, 256, 4, 2, 128),
                                  kw=dict(is_causal=True, kv_offset=300)),
    "window_two_sided_gqa_d64": dict(shape=(1, 512, 512, 4, 1, 64),
                                     kw=dict(sliding_window=(100, 30))),
    "documents_empty_rows": dict(shape=(2, 1000, 1000, 8, 2, 128),
                                 kw=dict(is_causal=True,
                                         segment_ids=_seg(1000, 1000, 5, seed=15,
                                                          orphan=(100, 230)))),
    "documents_not_causal_f16": dict(shape=(2, 777, 777, 4, 4, 128), dtype=jnp.float16,
                                     kw=dict(segment_ids=_seg(777, 777, 4, seed=16))),
    "head_dim_96": dict(shape=(1, 300, 300, 2, 2, 96), kw=dict(is_causal=True)),
}


# The persistent dK/dV kernel (HopperConfig(dkv_persistent=True)): one CTA per SM, each
# looping over (b, KV head, KV tile) work items; the Q / dO ring and the producer carried across
# items, K / V double-buffered, the next item's K / V loaded during the current one, the dK / dV
# stores not awaited. With the dynamic scheduler (the default pairing) and the static split.
_DKV_DYNAMIC = ha.HopperConfig(dkv_persistent=True, persistent_dynamic=True)
# The persistent fused backward (HopperConfig(fused_persistent=True)): one K / V buffer reloaded
# after each item's final meeting, dK / dV staged through the dS^T tiles.
_FUSED_DYNAMIC = ha.HopperConfig(fused_persistent=True, persistent_dynamic=True)


@requires_hopper
@pytest.mark.parametrize("kernel", ["dq", "dkv", "fused"])
@pytest.mark.parametrize("name", sorted(PERSISTENT_BWD))
def test_persistent_backward(name, kernel):
  c = PERSISTENT_BWD[name]
  cfg = {"dq": _BWD_PERSISTENT, "dkv": _DKV_DYNAMIC, "fused": _FUSED_DYNAMIC}[kernel]
  check_backward(*c["shape"], c.get("dtype", jnp.bfloat16), config=cfg,
                 backward="fused" if kernel == "fused" else "mosaic", **c["kw"])


@requires_hopper
@pytest.mark.parametrize("cfg", [
    ha.HopperConfig(fused_persistent=True),                            # static split
    ha.HopperConfig(fused_persistent=True, persistent_ctas=7),
    dataclasses.replace(_FUSED_DYNAMIC, persistent_ctas=7),
    dataclasses.replace(_FUSED_DYNAMIC, tiles_fastest=True),
], ids=["static", "static_ctas7", "dynamic_ctas7", "dynamic_tiles_fastest"])
def test_persistent_fused_backward_configs(cfg):
  for D in (64, 128):
    check_backward(2, 640, 700, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=60,
                   config=cfg, backward="fused")
  check_backward(2, 640, 640, 4, 2, 128, jnp.bfloat16, config=cfg, backward="fused",
                 segment_ids=_seg(640, 640, 4, seed=17, orphan=(300, 420)))


@requires_hopper
@pytest.mark.parametrize("cfg", [
    ha.HopperConfig(bwd_persistent=True, persistent_ctas=7),          # many items per CTA
    ha.HopperConfig(bwd_persistent=True, tiles_fastest=True),
    ha.HopperConfig(bwd_persistent=True, persistent=True),            # both kernels persistent
    ha.HopperConfig(bwd_persistent=True, bwd_stages=3),               # D=64 only (SMEM)
    ha.HopperConfig(dkv_persistent=True),                              # static split
    ha.HopperConfig(dkv_persistent=True, persistent_ctas=7),
    dataclasses.replace(_DKV_DYNAMIC, persistent_ctas=7),
    dataclasses.replace(_DKV_DYNAMIC, tiles_fastest=True),
    dataclasses.replace(_DKV_DYNAMIC, bwd_stages=3),
], ids=["ctas7", "tiles_fastest", "with_persistent_forward", "d64_3stages", "dkv_static",
        "dkv_static_ctas7", "dkv_dynamic_ctas7", "dkv_tiles_fastest", "dkv_d64_3stages"])
def test_persistent_backward_configs(cfg):
  D = 64 if cfg.bwd_stages == 3 else 128
  check_backward(2, 640, 700, 4, 2, D, jnp.bfloat16, is_causal=True, q_offset=60, config=cfg)
  check_backward(2, 640, 640, 4, 2, D, jnp.bfloat16, config=cfg,
                 segment_ids=_seg(640, 640, 4, seed=17, orphan=(300, 420)))


@requires_hopper
def test_persistent_backward_block_mask():
  """BlockMask lists + mask_fn through the persistent dQ kernel (a zero-step tile: query block
  1 of head 0 lists nothing), against the dense reference, lse gradient included."""
  from pallas_kernels import from_dense
  B, T, N, K, D = 2, 640, 8, 2, 128
  q, k, v, do, dl = _inputs(B, T, T, N, K, D, jnp.bfloat16, seed=18)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  dense = np.broadcast_to(((i // 192 == j // 192) & (j <= i)) | (j < 100), (B, N, T, T)).copy()
  dense[:, 0, 128:256] = False   # head 0: rows 128..255 meet no key
  bs = from_dense(dense[:1], 128, 128)

  def mask_fn(b, h, q_pos, kv_pos, qv, kvv):   # primitives of pallas_mgpu.MASK_OPS only
    m = ((q_pos // 192 == kv_pos // 192) & (kv_pos <= q_pos)) | (kv_pos < 100)
    return m & ((h != 0) | (q_pos < 128) | (q_pos > 255))

  def loss(fn, q, k, v, **kw):
    o, l = fn(q, k, v, return_lse=True, **kw)
    return (jnp.sum(o.astype(jnp.float32) * do)
            + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0) * dl))
  kern = jax.jit(jax.grad(lambda *a: loss(ha.hopper_attention, *a, config=_BWD_PERSISTENT,
                                          block_sparsity=bs, mask_fn=mask_fn),
                          argnums=(0, 1, 2)))
  poison(((B, T, N, D), jnp.bfloat16), ((B, T, K, D), jnp.bfloat16), ((B, T, K, D), jnp.bfloat16))
  got = kern(q, k, v)
  want = jax.grad(lambda *a: loss(ref, *a, mask=jnp.asarray(dense)), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip(("dq", "dk", "dv"), got, want):
    assert rel_err(a, b) < 5e-2, (name, rel_err(a, b))
  assert np.all(np.asarray(got[0], np.float32)[:, 128:256, 0] == 0)   # rows without a key


# --------------------------------------------------------------------------------------------
# Through jattn.
# --------------------------------------------------------------------------------------------
@requires_hopper
def test_backend_through_jattn():
  import jattn
  from jattn.backends import pallas_mgpu
  pallas_mgpu.register_backends()
  q, k, v, do, _ = _inputs(2, 384, 384, 8, 2, 128, jnp.bfloat16)
  kw = dict(is_causal=True, sliding_window=(256, 0))
  out = jattn.attention(q, k, v, implementation="pallas_mgpu", **kw)
  want = jattn.attention(q, k, v, implementation="reference", **kw)
  assert rel_err(out, want) < 2e-2
  g = jax.grad(lambda q: jnp.sum(jattn.attention(q, k, v, implementation="pallas_mgpu", **kw)
                                 .astype(jnp.float32) * do))(q)
  g2 = jax.grad(lambda q: jnp.sum(jattn.attention(q, k, v, implementation="reference", **kw)
                                  .astype(jnp.float32) * do))(q)
  assert rel_err(g, g2) < 5e-2
  # refused features fall back
  with pytest.raises(jattn.NotSupportedError):
    jattn.attention(q, k, v, implementation="pallas_mgpu", softcap=5.0)
  expl = jattn.explain(q, k, v, is_causal=True)
  assert "pallas_mgpu" in str(expl)


# --------------------------------------------------------------------------------------------
# Mask functions / BlockMasks: the kernel walks the BlockMask lists and evaluates the mask on
# the partial blocks in registers. Each case also checks that Mosaic GPU lowers the mask's
# primitives (pallas_mgpu.MASK_OPS is the list this verifies).
# --------------------------------------------------------------------------------------------
def _mask_cases():
  from jattn import masks
  rng = np.random.default_rng(3)
  pad = (rng.random((2, 640)) < 0.8).astype(np.int32)
  pad[:, 0] = 1
  ids = np.sort(rng.integers(0, 5, (2, 640)), axis=1).astype(np.int32)
  return {
      "prefix_lm": masks.prefix_lm(200),
      "chunked_causal": masks.chunked_causal(192),      # integer // and %
      "causal_and_padding": masks.and_masks(masks.causal(), masks.padding(jnp.asarray(pad))),
      "or_windows": masks.or_masks(masks.sliding_window_causal(100), masks.prefix_lm(64)),
      "plain_function": lambda b, h, q, kv: ((q - kv) % 3 != 1) & (kv <= q + 50),
      "docs_block_mask": masks.create_block_mask(
          masks.and_masks(masks.causal(), masks.segments(jnp.asarray(ids))), 2, None, 640, 640,
          128),
  }


@requires_hopper
@pytest.mark.parametrize("name", ["prefix_lm", "chunked_causal", "causal_and_padding",
                                  "or_windows", "plain_function", "docs_block_mask"])
def test_block_mask_matches_reference(name):
  import jattn
  from jattn.backends import pallas_mgpu
  from gpu_util import check_against_reference
  pallas_mgpu.register_backends()
  mask = _mask_cases()[name]
  q, k, v, _, _ = _inputs(2, 640, 640, 8, 2, 128, jnp.bfloat16, seed=7)
  assert jattn.explain(q, k, v, mask=mask).chosen == "pallas_mgpu"
  poison(((2, 640, 8, 128), jnp.bfloat16))
  check_against_reference("pallas_mgpu", q, k, v, dict(mask=mask), tol=1e-2, grad_tol=2e-2)


# Primitives added to pallas_mgpu.MASK_OPS in the sixth session, after each compiled and matched
# the reference on the H100 on its own (`test_block_mask_single_op`); `not` of a boolean array
# compiles only through the kernel's rewrite (`hopper_attention._without_not`: Mosaic GPU
# in jax 0.11.2 rejects it with "Register bitwidth in target type must be divisible by 8, got
# 2"). The combined test below then runs them together with a folded two-sided window.
WIDER_MASK_OPS = frozenset({"not", "xor", "ge", "mul", "neg", "abs", "min", "max",
                            "broadcast_in_dim"})


def _wide_ops_mask(b, h, q, kv):
  """Built from every primitive of WIDER_MASK_OPS (bitwise ops on bools); the call's two-sided
  window adds ge and broadcast_in_dim when it is folded in."""
  spread = jnp.maximum(q, kv) * 3 - jnp.minimum(q, kv)
  return (~(spread % 7 == 0)) ^ ((jnp.abs(q - kv) >= 150) & (-kv > -600))


# One mask per added primitive, each built from the older MASK_OPS plus that one primitive.
SINGLE_OP_MASKS = {
    "not": lambda b, h, q, kv: ~(q % 3 == kv % 5),
    "xor": lambda b, h, q, kv: (q < kv + 100) ^ (q > kv + 300),
    "ge": lambda b, h, q, kv: q >= kv - 50,
    "mul": lambda b, h, q, kv: (q * 3) % 7 < kv % 5 + 1,
    "neg": lambda b, h, q, kv: -kv > -q - 200,
    "abs": lambda b, h, q, kv: jnp.abs(q - kv) < 200,
    "min": lambda b, h, q, kv: jnp.minimum(q, 300) > kv - 20,
    "max": lambda b, h, q, kv: jnp.maximum(kv, 100) < q + 10,
    # boolean constants broadcast by where()
    "broadcast_in_dim": lambda b, h, q, kv: jnp.where(q + 50 < kv, False, True),
}


def _mask_ops_of(q, k, v, **kw):
  from jattn._call import validate
  args = dict(bias=None, mask=None, scale=None, is_causal=False, score_mod=None,
              segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None, softcap=None,
              sinks=None, dropout_rate=0.0, dropout_rng=None, return_lse=False)
  args.update(kw)
  return validate(q, k, v, **args).mask_ops


@requires_hopper
@pytest.mark.parametrize("op", sorted(SINGLE_OP_MASKS))
def test_block_mask_single_op(op):
  import jattn
  from jattn.backends import pallas_mgpu
  from gpu_util import check_against_reference
  pallas_mgpu.register_backends()
  q, k, v, _, _ = _inputs(1, 384, 384, 4, 2, 64, jnp.bfloat16, seed=11)
  kw = dict(mask=SINGLE_OP_MASKS[op])
  ops = _mask_ops_of(q, k, v, **kw)
  older = pallas_mgpu.MASK_OPS - WIDER_MASK_OPS
  assert op in ops and ops - {op} <= older, ops   # exactly one added primitive
  assert jattn.explain(q, k, v, **kw).chosen == "pallas_mgpu"
  poison(((1, 384, 4, 64), jnp.bfloat16))
  check_against_reference("pallas_mgpu", q, k, v, kw, tol=1e-2, grad_tol=2e-2)


@requires_hopper
def test_block_mask_wider_ops_and_two_sided_window():
  import jattn
  from jattn.backends import pallas_mgpu
  from gpu_util import check_against_reference
  pallas_mgpu.register_backends()
  q, k, v, _, _ = _inputs(2, 640, 640, 8, 2, 128, jnp.bfloat16, seed=9)
  kw = dict(mask=_wide_ops_mask, sliding_window=(300, 100))
  ops = _mask_ops_of(q, k, v, **kw)
  assert WIDER_MASK_OPS <= ops <= pallas_mgpu.MASK_OPS, ops
  assert jattn.explain(q, k, v, **kw).chosen == "pallas_mgpu"
  poison(((2, 640, 8, 128), jnp.bfloat16))
  check_against_reference("pallas_mgpu", q, k, v, kw, tol=1e-2, grad_tol=2e-2)


@requires_hopper
def test_block_mask_offsets_gqa_ragged_lse():
  """T != S, not tile multiples, static offsets, GQA, lse and its gradient."""
  import jattn
  from jattn import masks
  from jattn.backends import pallas_mgpu
  pallas_mgpu.register_backends()
  q, k, v, do, dl = _inputs(1, 300, 460, 8, 2, 64, jnp.bfloat16, seed=8)
  kw = dict(mask=masks.prefix_lm(40), q_offset=150, kv_offset=0, return_lse=True)

  def loss(impl, q, k, v):
    o, l = jattn.attention(q, k, v, implementation=impl, **kw)
    return (jnp.sum(o.astype(jnp.float32) * do)
            + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0) * dl))
  o, l = jax.jit(lambda q, k, v: jattn.attention(q, k, v, implementation="pallas_mgpu",
                                                 **kw))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  o2, l2 = jattn.attention(f32(q), f32(k), f32(v), implementation="reference", **kw)
  assert rel_err(o, o2) < 2e-2 and rel_err(l, l2) < 1e-3
  g = jax.jit(jax.grad(lambda *a: loss("pallas_mgpu", *a), argnums=(0, 1, 2)))(q, k, v)
  g2 = jax.grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2))(f32(q), f32(k), f32(v))
  for name, a, b in zip(("dq", "dk", "dv"), g, g2):
    assert rel_err(a, b) < 5e-2, name


# --------------------------------------------------------------------------------------------
# FA4's lazy rescale (HopperConfig.rescale_threshold; the overlapped defaults use 8): row
# references that lag the row max by up to 2^8, O rescaled only by the threads whose rows
# moved (a per-thread branch compiled only on the GPU). Logits scaled up so that row maxima
# move by more than the threshold in some steps and by less in others.
# --------------------------------------------------------------------------------------------
def _check_scaled_forward(B, T, S, N, K, D, dtype, qscale, config, **kw):
  q, k, v, _, _ = _inputs(B, T, S, N, K, D, dtype, seed=3)
  q = (q.astype(jnp.float32) * qscale).astype(dtype)
  f = jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, return_lse=True, config=config,
                                                  **kw))
  poison(((B, T, N, D), dtype), ((B, N, T), jnp.float32))
  o, l = f(q, k, v)
  o2, l2 = ref(q, k, v, return_lse=True, **kw)
  assert rel_err(o, o2) < _tol(dtype) and rel_err(l, l2) < 1e-3


_LAZY = dataclasses.replace(_OVERLAP, rescale_threshold=8, schedule_barrier=False)
LAZY_FWD = {
    "dense_bf16": ((2, 1024, 1024, 4, 4, 128, jnp.bfloat16), _LAZY, {}),
    "dense_f16_d64": ((2, 640, 640, 4, 4, 64, jnp.float16), _LAZY, {}),
    "causal_gqa_ragged_offset": ((2, 700, 900, 8, 2, 128, jnp.bfloat16), _LAZY,
                                 dict(is_causal=True, q_offset=200)),
    "window_two_sided": ((1, 1024, 1024, 4, 2, 128, jnp.bfloat16), _LAZY,
                         dict(sliding_window=(300, 100))),
    "default_persistent_dense_1k": ((2, 1024, 1024, 8, 8, 128, jnp.bfloat16),
                                    ha.default_config(128, 1024, uniform_tiles=True), {}),
    "default_band_window": ((1, 2048, 2048, 4, 2, 128, jnp.bfloat16),
                            ha.default_config(128, 2048, short_walks="band"),
                            dict(is_causal=True, sliding_window=(300, 0))),
}


@requires_hopper
@pytest.mark.parametrize("qscale", [1.0, 6.0])
@pytest.mark.parametrize("name", sorted(LAZY_FWD))
def test_lazy_rescale_forward(name, qscale):
  shape, cfg, kw = LAZY_FWD[name]
  assert cfg.rescale_threshold == 8 and cfg.overlap_softmax
  _check_scaled_forward(*shape, qscale, cfg, **kw)


# ...and with the row max on demand (HopperConfig.max_on_demand: only a warp whose row sums
# exceed 2^8 takes the row max, a vote in inline PTX), the long calls' default; logits x30
# make every step's warps vote for it
@requires_hopper
@pytest.mark.parametrize("qscale", [1.0, 6.0, 30.0])
@pytest.mark.parametrize("name", ["dense_bf16", "dense_f16_d64", "causal_gqa_ragged_offset",
                                  "window_two_sided"])
def test_max_on_demand_forward(name, qscale):
  shape, cfg, kw = LAZY_FWD[name]
  _check_scaled_forward(*shape, qscale, dataclasses.replace(cfg, max_on_demand=True), **kw)


@requires_hopper
def test_lazy_rescale_default_long_call_backward():
  # the long-call default (overlap + lazy rescale forward, fused backward) on logits x4: the
  # backward takes the forward's lse, whatever reference its rows ended on
  cfg = ha.default_config(128, 2048, static_ranges=True)
  assert cfg.rescale_threshold == 8 and cfg.max_on_demand
  q, k, v, do, _ = _inputs(1, 2048, 2048, 4, 2, 128, jnp.bfloat16, seed=4)
  q = (q.astype(jnp.float32) * 4.0).astype(jnp.bfloat16)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, is_causal=True).astype(jnp.float32) * do)
  poison(((1, 2048, 4, 128), jnp.bfloat16), ((1, 2048, 2, 128), jnp.bfloat16))
  got = jax.jit(jax.grad(loss(ha.hopper_attention), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    assert rel_err(a, b) < 5e-2
